"""How a trained fold runs on a CPU: the same computation through PyTorch (float32 or bfloat16) or ONNX Runtime
(float32 or int8), and the export step that writes the ONNX files and measures what int8 changes.

Every engine computes :class:`ServingModel`: a prepared uint8 RGB image in, probabilities (classifier) or the grade
value (regression) out, normalisation and softmax included, so the grader hands the same array to each engine.
The ONNX files sit beside the fold's ``export.pkl``: ``model.onnx`` (float32) and ``model-int8.onnx`` (weights and
activations quantised to 8 bits, calibrated on the fold's own training images). Loading an ONNX file runs no code,
unlike unpickling ``export.pkl``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .ensemble import grade_rule
from .errors import UserError
from .io import atomic_path, write_text

ENGINES = ("torch", "bf16", "onnx", "int8")
ENGINE_HELP = ("torch: PyTorch float32 (export.pkl); bf16: PyTorch bfloat16 + channels-last, for CPUs with "
               "AVX512-BF16/AMX; onnx: ONNX Runtime float32 (model.onnx); int8: ONNX Runtime, 8-bit "
               "(model-int8.onnx); make the ONNX files with scripts/export_onnx.py")
ONNX_FILES = {"onnx": "model.onnx", "int8": "model-int8.onnx"}
REPORT = "onnx.json"


class ServingModel(nn.Module):
    """A fold's network with the input handling around it: uint8 RGB (N, H, W, 3) → probabilities (N, 5) or
    values (N, 1)."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor, regression: bool):
        super().__init__()
        self.model, self.regression = model, regression
        self.register_buffer("mean", mean.float().reshape(1, 3, 1, 1) * 255)  # folds the /255 into the constants
        self.register_buffer("std", std.float().reshape(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        out = self.model(x)
        return out if self.regression else out.softmax(1)


def serving_model(learn, regression: bool) -> ServingModel:
    """The :class:`ServingModel` of a fastai learner (its Normalize statistics, its model in eval mode, on CPU)."""
    from fastai.vision.all import Normalize

    norm = [t for t in learn.dls.after_batch.fs if isinstance(t, Normalize)]
    mean, std = ((norm[0].mean.cpu(), norm[0].std.cpu()) if norm else (torch.zeros(3), torch.ones(3)))
    return ServingModel(learn.model.cpu(), mean, std, regression).eval()


def load_learner_quietly(path: Path, cpu: bool = True):
    """fastai's ``load_learner`` without its warning that pickles can run code: only files the operator named (or
    the experiment's own exports, found through its config) reach this point."""
    from fastai.learner import load_learner

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*insecure pickle.*")
        return load_learner(path, cpu=cpu)


# ------------------------------------------------------------------------------------------ the runners
class TorchRunner:
    """A ServingModel in PyTorch; ``bf16`` autocasts to bfloat16 with channels-last (fast only with native bf16)."""

    def __init__(self, model: ServingModel, bf16: bool = False):
        self.model, self.bf16 = model, bf16
        if bf16:
            self.model = model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images))
        if not self.bf16:
            return self.model(x).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float().numpy()


class OnnxRunner:
    """An exported ServingModel in ONNX Runtime on the CPU, one image per call."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, one thread per core
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its warnings about unused initialisers are noise to a user
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types for a bad file
            raise UserError(f"{path}: not a usable ONNX model ({str(e).splitlines()[0][:160]}); "
                            "export it again with scripts/export_onnx.py") from None
        self.input = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape  # [1, size, size, 3] as exported
        self.image_size = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return np.concatenate([self.session.run(None, {self.input: images[i:i + 1]})[0] for i in range(len(images))])


# ------------------------------------------------------------------------------------------ exporting
def export_onnx(model: ServingModel, size: int, path: Path) -> Path:
    """Write ``model`` as ONNX for one (size × size) image, through PyTorch's exporter (torch.export); atomic."""
    example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress lines and deprecation notes
        program = torch.onnx.export(model, (example,), input_names=["image"], output_names=["output"],
                                    dynamo=True, external_data=False, verbose=False)
        program.save(str(tmp))
    return path


def quantize_int8(onnx_path: Path, out: Path, calibration_images: Iterable[np.ndarray]) -> Path:
    """Static int8 quantisation with ONNX Runtime: the convolutions (where the time goes) get per-channel int8
    weights and uint8 inputs whose ranges are measured on ``calibration_images`` (the fold's training images, so
    nothing of the validation fold leaks); the head and the outputs stay float32 (probabilities quantised to
    1/255 steps would no longer sum to 1). On a real APTOS fold, quantising the convolutions only kept 99.3% of
    grades against 98.3% for ORT's default set of operators, at the same speed."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        """The calibration images, one batch of one at a time, as ONNX Runtime asks for them."""

        def __init__(self):
            self.images = iter(calibration_images)

        def get_next(self):
            img = next(self.images, None)
            return None if img is None else {"image": np.ascontiguousarray(img[None], dtype=np.uint8)}

    with atomic_path(out) as tmp, _quiet_root_logger():
        pre = tmp.with_suffix(".pre.onnx")
        try:
            # ORT's graph clean-up before quantising; its symbolic shape inference fails on fastai's concat pooling
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(tmp), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"])
        finally:
            pre.unlink(missing_ok=True)
    return out


@contextlib.contextmanager
def _quiet_root_logger():
    """The quantiser logs on the root logger (a warning per 1-D weight it leaves per-tensor): silence it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@dataclass
class Agreement:
    """How far one engine's outputs are from PyTorch float32's on the same images."""

    images: int
    max_abs_diff: float
    grade_agreement: float  # fraction of images given the same grade
    qwk_reference: float | None  # against the labels, where known
    qwk_engine: float | None


def agreement(reference: np.ndarray, outputs: np.ndarray, to_grade, labels: np.ndarray | None = None) -> Agreement:
    from .train import quadratic_kappa

    ref_grades, grades = to_grade(reference), to_grade(outputs)
    qwk = (lambda g: float(quadratic_kappa(g, labels))) if labels is not None else (lambda g: None)
    return Agreement(len(reference), float(np.abs(reference - outputs).max()), float(np.mean(ref_grades == grades)),
                     qwk(ref_grades), qwk(grades))


def onnx_files(fold_dir: Path) -> dict[str, Path]:
    return {engine: fold_dir / name for engine, name in ONNX_FILES.items()}


def save_report(fold_dir: Path, report: dict) -> Path:
    return write_text(fold_dir / REPORT, json.dumps(report, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ per experiment
def read_prepared(paths: Iterable[str]) -> np.ndarray:
    """Preprocessed PNGs (the prepare stage's output) as one uint8 RGB array (N, H, W, 3)."""
    import cv2

    def read(p):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"{p}: preprocessed image missing or unreadable: run scripts/preprocess.py again")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    return np.stack([read(p) for p in paths])


def run_batched(runner, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([runner(images[i:i + batch]) for i in range(0, len(images), batch)])


def export_fold(experiment, fold: int, int8: bool = True, calibration_images: int = 128,
                check_images: int | None = None, force: bool = False, verbose: bool = True) -> dict:
    """Write ``model.onnx`` (and ``model-int8.onnx``) for one trained fold and measure each against PyTorch
    float32 on the fold's validation images: largest output difference, grade agreement, QWK. The figures are
    saved as ``onnx.json`` beside them; a fold already exported from the same ``export.pkl`` is skipped."""
    from .predict import load_tuning
    from .train import training_table

    config, fold_dir = experiment.config, experiment.fold_dir(fold)
    source = fold_dir / "export.pkl"
    if not source.is_file():
        raise UserError(f"{source} not found: train fold {fold} first (scripts/train_fold.py --fold {fold})")
    files, report_file = onnx_files(fold_dir), fold_dir / REPORT
    wanted = [files["onnx"]] + ([files["int8"]] if int8 else [])
    if not force and report_file.is_file() and all(p.is_file() and p.stat().st_mtime >= source.stat().st_mtime
                                                   for p in wanted):
        report = json.loads(report_file.read_text())
        if verbose:
            print(f"fold {fold}: already exported ({', '.join(p.name for p in wanted)}); --force redoes it")
        return report

    regression = config.head == "regression"
    model = serving_model(load_learner_quietly(source), regression)
    export_onnx(model, config.image_size, files["onnx"])

    try:
        table = training_table(experiment)
    except UserError as e:
        if int8:
            raise UserError(f"int8 calibration needs fold {fold}'s preprocessed training images ({e}); "
                            "run the export where the model was trained, or pass --no-int8") from None
        table = None
    rng = np.random.default_rng(config.seed)
    if table is not None:
        valid = table[table["fold"] == fold]
        if check_images and len(valid) > check_images:
            valid = valid.iloc[np.sort(rng.choice(len(valid), check_images, replace=False))]
        check, labels, checked_on = (read_prepared(valid["path"]), valid["grade"].to_numpy(int),
                                     f"fold {fold} validation images")
    else:  # no data here: random images still show whether ONNX Runtime computes what PyTorch does
        check = rng.integers(0, 256, (8, config.image_size, config.image_size, 3), dtype=np.uint8)
        labels, checked_on = None, "random images (no preprocessed data found)"
    to_grade = grade_rule(regression, load_tuning(experiment)["thresholds"])
    reference = run_batched(TorchRunner(model), check)
    report = {"fold": fold, "image_size": config.image_size, "head": config.head, "checked_on": checked_on,
              "onnx": agreement(reference, run_batched(OnnxRunner(files["onnx"]), check), to_grade, labels).__dict__}
    if int8:
        train = table[table["fold"] != fold]
        picked = train["path"].to_numpy()[rng.choice(len(train), min(calibration_images, len(train)), replace=False)]
        quantize_int8(files["onnx"], files["int8"], (read_prepared([p])[0] for p in picked))
        report["int8"] = agreement(reference, run_batched(OnnxRunner(files["int8"]), check), to_grade,
                                   labels).__dict__
        report["int8"]["calibration_images"] = len(picked)
    save_report(fold_dir, report)
    if verbose:
        print(describe_report(report))
    return report


def describe_report(report: dict) -> str:
    lines = [f"fold {report['fold']}: against PyTorch float32 on {report['checked_on']}"]
    for engine in ("onnx", "int8"):
        if engine in report:
            a = report[engine]
            qwk = (f"; QWK {a['qwk_reference']:.3f} (float32) → {a['qwk_engine']:.3f}"
                   if a["qwk_reference"] is not None else "")
            lines.append(f"  {ONNX_FILES[engine]:16s} {a['images']} images: same grade on "
                         f"{100 * a['grade_agreement']:.1f}%, largest output difference {a['max_abs_diff']:.2g}{qwk}")
    return "\n".join(lines)
