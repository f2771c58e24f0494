"""How a trained fold runs on a CPU: the same computation (a prepared uint8 RGB image in, probabilities or the grade
value out) through PyTorch (float32 or bfloat16, :mod:`.torch_engine`) or ONNX Runtime (float32 or int8, here).

This module imports neither torch nor fastai: a server with only ``model.onnx`` files runs without them. Loading an
ONNX file runs no code, unlike unpickling ``export.pkl``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError

ENGINES = ("torch", "bf16", "onnx", "int8")
ENGINE_HELP = ("torch: PyTorch float32 (export.pkl); bf16: PyTorch bfloat16 + channels-last, for CPUs with "
               "AVX512-BF16/AMX; onnx: ONNX Runtime float32 (model.onnx); int8: ONNX Runtime, 8-bit "
               "(model-int8.onnx); make the ONNX files with scripts/export_onnx.py")
ONNX_FILES = {"onnx": "model.onnx", "int8": "model-int8.onnx"}
#: the file a trained fold runs from, by engine
MODEL_FILES = {"torch": "export.pkl", "bf16": "export.pkl", **ONNX_FILES}
#: the ONNX files' metadata key holding the fingerprint of the config that trained the fold they were exported from
FINGERPRINT_KEY = "retinopathy_fingerprint"


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
        self.fingerprint = self.session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return np.concatenate([self.session.run(None, {self.input: images[i:i + 1]})[0] for i in range(len(images))])


def tta_views(images: np.ndarray, tta: bool) -> list[np.ndarray]:
    """A batch (N, H, W, 3) as the model sees it at test time: as is, and with ``tta`` flipped left-right and
    upside-down (the same views as :class:`~retinopathy.training.callbacks.FlipInput` at prediction)."""
    return [images, images[:, :, ::-1], images[:, ::-1]] if tta else [images]


def run_batched(runner, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """A runner over many images, ``batch`` at a time."""
    return np.concatenate([runner(images[i:i + batch]) for i in range(0, len(images), batch)])
