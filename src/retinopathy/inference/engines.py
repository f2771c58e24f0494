"""How a trained fold runs: the engines by name, each with the file it runs from, how that file is made, what runs
it and what a Kaggle kernel must bundle for it. Every engine computes the same thing: a prepared uint8 RGB image in,
the head's served outputs out.

This module imports neither torch nor fastai: a server with only ONNX files runs without them. Loading an ONNX
file runs no code, unlike unpickling ``export.pkl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..paths import FoldFiles

#: the ONNX files' metadata key holding the fingerprint of the config that trained the fold they were exported from
FINGERPRINT_KEY = "retinopathy_fingerprint"
#: the ONNX files' metadata key holding the digest of the very export.pkl they were exported from
EXPORT_KEY = "retinopathy_export"
#: the export's measurements, beside the fold's ONNX files (``retinopathy export-onnx``)
ONNX_REPORT = FoldFiles.ONNX_REPORT
#: an exported engine is served or bundled only where it gave PyTorch's grade on at least this share of its fold's
#: validation images (``--accept-disagreement`` overrides)
MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class Engine:
    """One way of running a fold."""

    name: str
    #: the file in ``fold<K>/`` it runs from
    model_file: str
    help: str
    #: ONNX Runtime (torch-free, no gradients: no heat maps) rather than PyTorch
    onnx: bool = False
    #: PyTorch in bfloat16 with channels-last (fast only on CPUs with native bf16)
    bf16: bool = False
    #: what a kernel installs for it beyond the library's base
    packages: tuple[str, ...] = ()
    #: ``retinopathy export-onnx`` writes its file (the torch engines run training's own export.pkl)
    exported: bool = False

    def runner(self, path: Path, config, threads: int | None = None, device: str = "cpu"):
        """What runs the fold in ``path`` (a file of this engine, trained with ``config``): a callable from images
        (N, H, W, 3) to the head's served outputs."""
        if self.onnx:
            return OnnxRunner(path, threads)
        from ..training.serving_model import torch_runner

        return torch_runner(path, config, threads, bf16=self.bf16, device=device)


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("torch", FoldFiles.EXPORT, f"PyTorch float32 ({FoldFiles.EXPORT})"),
    Engine("bf16", FoldFiles.EXPORT, "PyTorch bfloat16 + channels-last, for CPUs with AVX512-BF16/AMX", bf16=True),
    Engine("onnx", FoldFiles.ONNX, f"ONNX Runtime float32 ({FoldFiles.ONNX})", onnx=True, packages=("onnxruntime",),
           exported=True),
    Engine("int8", FoldFiles.INT8, f"ONNX Runtime 8-bit ({FoldFiles.INT8})", onnx=True, packages=("onnxruntime",),
           exported=True),
)}
#: the engines ``retinopathy export-onnx`` makes files for
EXPORTED = tuple(name for name, e in ENGINES.items() if e.exported)
ENGINE_HELP = "; ".join(f"{e.name}: {e.help}" for e in ENGINES.values()) + \
    " (make the ONNX files with retinopathy export-onnx)"


def get_engine(name: str) -> Engine:
    """An engine by name, or one line naming the known ones."""
    try:
        return ENGINES[name]
    except KeyError:
        raise UserError(f"unknown engine '{name}': use one of {', '.join(ENGINES)}") from None


def engine_of_file(path: Path, asked: str = "torch") -> Engine:
    """The engine that runs ``path``: the one asked for where the file is its own, else the engine whose file this
    is by name (``model-int8.onnx`` → int8), else ONNX Runtime float32 for any other ``.onnx`` file."""
    path = Path(path)
    if path.name == ENGINES[asked].model_file:
        return ENGINES[asked]
    named = [e for e in ENGINES.values() if e.model_file == path.name]
    if named:
        return named[0]
    return ENGINES["onnx"] if path.suffix == ".onnx" else ENGINES[asked]


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
                            "export it again with retinopathy export-onnx") from None
        self.input = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape  # [1, size, size, 3] as exported
        self.image_size = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.fingerprint, self.export = metadata.get(FINGERPRINT_KEY), metadata.get(EXPORT_KEY)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return np.concatenate([self.session.run(None, {self.input: images[i:i + 1]})[0] for i in range(len(images))])


def tta_views(images: np.ndarray, tta: bool) -> list[np.ndarray]:
    """A batch (N, H, W, 3) as the model sees it at test time: as is, and with ``tta`` flipped left-right and
    upside-down. The one definition of test-time augmentation: every caller grades through the Grader."""
    return [images, images[:, :, ::-1], images[:, ::-1]] if tta else [images]



def disagreement(model_file: Path) -> str:
    """Why an exported engine's file may not stand in for PyTorch ('' where it may): its fold's export report
    (``onnx.json`` beside it) says how often it gave PyTorch's grade, and that must be at least
    :data:`MIN_AGREEMENT`. PyTorch's own ``export.pkl`` always may."""
    import json

    model_file = Path(model_file)
    engine = next((e for e in ENGINES.values() if e.exported and e.model_file == model_file.name), None)
    if engine is None:
        return ""
    report = model_file.parent / ONNX_REPORT
    try:
        agreed = float(json.loads(report.read_text())[engine.name]["grade_agreement"])
    except (OSError, ValueError, KeyError, TypeError):
        return (f"{model_file}: how often it grades as PyTorch does is not recorded ({report} missing or without "
                f"{engine.name}): export it again (retinopathy export-onnx), or pass --accept-disagreement")
    if agreed < MIN_AGREEMENT:
        return (f"{model_file}: gave PyTorch's grade on {100 * agreed:.1f} % of its fold's validation images "
                f"({report.name}), below {100 * MIN_AGREEMENT:.0f} %: use --engine onnx or torch, or pass "
                "--accept-disagreement to use it anyway")
    return ""


def check_agreement(model_files, accept: bool = False) -> None:
    """Refuse, in one line naming the figure, an exported engine's file that grades unlike PyTorch (unless
    ``accept``)."""
    for path in [] if accept else model_files:
        why = disagreement(path)
        if why:
            raise UserError(why)
