"""The export step for CPU serving: each trained fold as the files of the exported engines (``model.onnx``, float32;
``model-int8.onnx``, weights and activations quantised to 8 bits, calibrated on the fold's own training images),
each graded through the Grader beside PyTorch float32 on the fold's validation images and reported in
``onnx.json``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.folds import training_table
from ..errors import UserError
from ..experiment import load_learner_quietly, read_provenance
from ..files import TEMP_SUFFIX, atomic_path, remove_stale_temporaries, write_text
from ..metrics import quadratic_kappa
from ..paths import FoldFiles
from ..preprocessing.image_io import read_prepared
from ..progress import steps
from ..training.serving_model import ServingModel, serving_model
from .engines import ENGINES, EXPORT_KEY, EXPORTED, FINGERPRINT_KEY, MIN_AGREEMENT, ONNX_REPORT, OnnxRunner, get_engine
from .grader import Grader


def export_onnx(model: ServingModel, size: int, path: Path, stamp: dict | None = None) -> Path:
    """Write ``model`` as ONNX for one (size × size) image, through PyTorch's exporter (torch.export), with
    ``stamp`` (the training config's fingerprint, the export's digest: :func:`provenance_stamp`) in its metadata;
    atomic."""
    example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress lines and deprecation notes
        program = torch.onnx.export(model, (example,), input_names=["image"], output_names=["output"],
                                    dynamo=True, external_data=False, verbose=False)
        program.save(str(tmp))
        if stamp:
            stamp_provenance(tmp, stamp)
    return path


def provenance_stamp(fold_dir: Path) -> dict:
    """What an ONNX file of a fold records of its source: the training config's fingerprint and the digest of the
    fold's ``export.pkl`` (both from its ``fingerprint.json``; empty where there is none)."""
    record = read_provenance(fold_dir) or {}
    return {k: v for k, v in ((FINGERPRINT_KEY, record.get("fingerprint")), (EXPORT_KEY, record.get("export"))) if v}


def stamp_provenance(path: Path, stamp: dict) -> None:
    """Record ``stamp`` in an ONNX file's metadata, so the file says what made it."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **stamp})
    onnx.save(model, str(path))


def quantize_int8(onnx_path: Path, out: Path, calibration_images: Iterable[np.ndarray],
                  stamp: dict | None = None) -> Path:
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
        pre = tmp.with_suffix(".pre" + TEMP_SUFFIX)  # a temporary's name: a killed run's is cleaned up
        try:
            # ORT's graph clean-up before quantising; its symbolic shape inference fails on fastai's concat pooling
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(tmp), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"])
            if stamp:
                stamp_provenance(tmp, stamp)
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
    """How the ``outputs`` of an engine compare with PyTorch float32's ``reference`` on the same images."""
    ref_grades, grades = to_grade(reference), to_grade(outputs)
    qwk = (lambda g: float(quadratic_kappa(g, labels))) if labels is not None else (lambda g: None)
    return Agreement(len(reference), float(np.abs(reference - outputs).max()), float(np.mean(ref_grades == grades)),
                     qwk(ref_grades), qwk(grades))


def onnx_files(fold_dir: Path) -> dict[str, Path]:
    """The exported engines' files of a fold, by engine."""
    return {name: Path(fold_dir) / ENGINES[name].model_file for name in EXPORTED}


def save_report(fold_dir: Path, report: dict) -> Path:
    """The export's measurements as ``onnx.json`` beside the files."""
    return write_text(fold_dir / ONNX_REPORT, json.dumps(report, indent=2) + "\n")


def _up_to_date(files: list[Path], report_file: Path, stamp: dict) -> bool:
    """Whether every file was exported from this very export.pkl (its digest, not its time, decides)."""
    def current(p: Path) -> bool:
        run = OnnxRunner(p, 1)
        return run.fingerprint == stamp.get(FINGERPRINT_KEY) and run.export == stamp.get(EXPORT_KEY)
    return report_file.is_file() and all(p.is_file() and current(p) for p in files)


def export_fold(experiment, fold: int, engines: tuple[str, ...] = EXPORTED, calibration_images: int = 128,
                check_images: int | None = None, force: bool = False, verbose: bool = True) -> dict:
    """Write the files of ``engines`` (ONNX float32 always, as the int8 file's source) for one trained fold and
    grade the fold's validation images with each through the Grader beside PyTorch float32: largest output
    difference, grade agreement, QWK. The figures are saved as ``onnx.json`` beside them; a fold already exported
    from the same ``export.pkl`` is skipped. Holds the fold's lock (no export of a fold in training, no two
    exports at once), under which a killed run's temporary files are removed."""
    with experiment.fold_lock(fold):
        remove_stale_temporaries(experiment.fold_dir(fold))
        return _export_fold(experiment, fold, engines, calibration_images, check_images, force, verbose)


def _export_fold(experiment, fold: int, engines: tuple[str, ...], calibration_images: int,
                 check_images: int | None, force: bool, verbose: bool) -> dict:
    config, fold_dir = experiment.config, experiment.fold_dir(fold)
    engines = tuple(dict.fromkeys(("onnx", *(get_engine(e).name for e in engines))))
    unknown = [e for e in engines if e not in EXPORTED]
    if unknown:
        raise UserError(f"engine {unknown[0]} runs training's own export.pkl: export one of {', '.join(EXPORTED)}")
    source = FoldFiles(fold_dir).export
    if not source.is_file():
        raise UserError(f"{source} not found: train fold {fold} first (retinopathy train --fold {fold})")
    stamp = provenance_stamp(fold_dir)
    files, report_file = onnx_files(fold_dir), fold_dir / ONNX_REPORT
    if not force and _up_to_date([files[e] for e in engines], report_file, stamp):
        if verbose:
            print(f"fold {fold}: already exported ({', '.join(files[e].name for e in engines)}); --force redoes it")
        return json.loads(report_file.read_text())

    step = steps(f"fold {fold}", 2 + ("int8" in engines), verbose)
    step("exporting to ONNX")
    export_onnx(serving_model(load_learner_quietly(source), config.head), config.image_size, files["onnx"], stamp)
    try:
        table = training_table(experiment)
    except UserError as e:
        if "int8" in engines:
            raise UserError(f"int8 calibration needs fold {fold}'s preprocessed training images ({e}); "
                            "run the export where the model was trained, or pass --engines onnx") from None
        table = None
    rng = np.random.default_rng(config.seed)
    if "int8" in engines:
        step("calibrating and quantising to int8")
        train = table[table["fold"] != fold]
        picked = train["path"].to_numpy()[rng.choice(len(train), min(calibration_images, len(train)), replace=False)]
        quantize_int8(files["onnx"], files["int8"], (read_prepared([p])[0] for p in picked), stamp)
    if table is not None:
        valid = table[table["fold"] == fold]
        if check_images and len(valid) > check_images:
            valid = valid.iloc[np.sort(rng.choice(len(valid), check_images, replace=False))]
        check, labels, checked_on = (read_prepared(valid["path"]), valid["grade"].to_numpy(int),
                                     f"fold {fold} validation images")
    else:  # no data here: random images still show whether ONNX Runtime computes what PyTorch does
        check = rng.integers(0, 256, (8, config.image_size, config.image_size, 3), dtype=np.uint8)
        labels, checked_on = None, "random images (no preprocessed data found)"
    # each engine as every caller runs it: through the Grader, one image at a time, the experiment's grade rule
    step(f"checking on {len(check)} {checked_on}")
    graders = {name: Grader([source if name == "torch" else files[name]], engine=name, any_export=True, tta=False)
               for name in ("torch", *engines)}
    outputs = {name: np.concatenate([g.outputs(check[i:i + 1]) for i in range(len(check))])
               for name, g in graders.items()}
    report = {"fold": fold, "image_size": config.image_size, "head": config.head, "checked_on": checked_on}
    for name in engines:
        report[name] = agreement(outputs["torch"], outputs[name], graders["torch"].grades, labels).__dict__
    if "int8" in engines:
        report["int8"]["calibration_images"] = len(picked)
    save_report(fold_dir, report)
    if verbose:
        print(describe_report(report))
    return report


#: an engine is recommended where it gives PyTorch's grade on this share of the images (what serving and the kernel
#: require) and costs at most this QWK
AGREES_ON, QWK_COST = MIN_AGREEMENT, 0.01


def engine_agrees(report: dict, engine: str) -> bool:
    """Whether an export report shows ``engine`` grading as PyTorch float32 does (within the margins above)."""
    a = report.get(engine)
    if not a:
        return False
    cost = (a["qwk_reference"] - a["qwk_engine"]) if a.get("qwk_reference") is not None else 0.0
    return a["grade_agreement"] >= AGREES_ON and cost <= QWK_COST


def describe_report(report: dict) -> str:
    """The export's measurements in a few lines for the terminal."""
    lines = [f"fold {report['fold']}: against PyTorch float32 on {report['checked_on']}"]
    for engine in EXPORTED:
        if engine in report:
            a = report[engine]
            qwk = (f"; QWK {a['qwk_reference']:.3f} (float32) → {a['qwk_engine']:.3f}"
                   if a["qwk_reference"] is not None else "")
            lines.append(f"  {ENGINES[engine].model_file:16s} {a['images']} images: same grade on "
                         f"{100 * a['grade_agreement']:.1f}%, largest output difference {a['max_abs_diff']:.2g}{qwk}")
    return "\n".join(lines)
