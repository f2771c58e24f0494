"""The PyTorch side of inference: a fold's network wrapped with its input handling and its head's activation
(:class:`ServingModel`), and the runner that executes it in float32, bfloat16 or (on a GPU) float16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..device import cpu_prefers_channels_last
from ..heads import Head, get_head


class ServingModel(nn.Module):
    """A fold's network with the input handling around it: uint8 RGB (N, H, W, 3) → the head's served outputs."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor, head: str | Head):
        super().__init__()
        self.model, self.head = model, get_head(head)  # looked up once, not on every forward pass
        self.register_buffer("mean", mean.float().reshape(1, 3, 1, 1) * 255)  # folds the /255 into the constants
        self.register_buffer("std", std.float().reshape(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return self.head.activate(self.model(x).float())


def serving_model(learn, head: str) -> ServingModel:
    """The :class:`ServingModel` of a fastai learner (its Normalize statistics, its model in eval mode, on CPU,
    with pooling every supported torch exports)."""
    from fastai.vision.all import Normalize

    from .pooling import portable

    norm = [t for t in learn.dls.after_batch.fs if isinstance(t, Normalize)]
    mean, std = ((norm[0].mean.cpu(), norm[0].std.cpu()) if norm else (torch.zeros(3), torch.ones(3)))
    return ServingModel(portable(learn.model.cpu()), mean, std, head).eval()


class TorchRunner:
    """A ServingModel in PyTorch; ``bf16`` autocasts to bfloat16 with channels-last (fast only with native bf16);
    ``device="cuda"`` runs it on the GPU in float16 (a Kaggle kernel with a GPU); on a CPU in float32 it takes the
    faster memory layout for its image size."""

    def __init__(self, model: ServingModel, bf16: bool = False, device: str = "cpu", image_size: int = 0):
        self.model, self.bf16, self.device = model.to(device), bf16, device
        if bf16 or device == "cuda" or cpu_prefers_channels_last(image_size):
            self.model = self.model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if self.device == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return self.model(x).float().cpu().numpy()
        if not self.bf16:
            return self.model(x).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float().numpy()


def torch_runner(export: Path, config, threads: int | None, bf16: bool, device: str) -> TorchRunner:
    """A fold's ``export.pkl`` as a :class:`TorchRunner` for its training ``config`` (torch and fastai are imported
    only for these engines)."""
    from ..experiment import load_learner_quietly

    if threads:
        torch.set_num_threads(threads)
    return TorchRunner(serving_model(load_learner_quietly(export), config.head), bf16=bf16, device=device,
                       image_size=config.image_size)
