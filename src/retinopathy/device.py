"""Device policy, decided once: which device and number format a fold trains and predicts in, and the memory
layout that is fastest there. Training, prediction and serving all ask here."""

from __future__ import annotations

import os
from pathlib import Path

#: the image size from which float32 work on a CPU runs faster in channels-last (oneDNN's preferred layout):
#: 1.15x at 128 px, 0.92x at 64 px for resnet18 on a 2-core CPU without bf16 (benchmarks/throughput.py); at
#: 224 px EfficientNet-Lite0's depthwise convolutions gain 1.7x training and 1.5x predicting
CHANNELS_LAST_FROM = 128


def cuda_available() -> bool:
    """Whether a CUDA GPU is visible to torch (False where torch is not installed: the ONNX-only server)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (where set), else by index."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    if not cuda_available():
        return []
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_prefers_channels_last(image_size: int) -> bool:
    """Whether float32 work at this image size runs on the CPU here and is faster in channels-last."""
    return not cuda_available() and image_size >= CHANNELS_LAST_FROM


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX): there bf16 autocast with channels-last
    roughly halves a training step; elsewhere it is emulated and slower, so it stays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
