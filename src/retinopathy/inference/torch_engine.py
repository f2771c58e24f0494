"""The PyTorch side of serving: a fold's network wrapped with its input handling (:class:`ServingModel`), and the
runner that executes it in float32 or bfloat16."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


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


class TorchRunner:
    """A ServingModel in PyTorch; ``bf16`` autocasts to bfloat16 with channels-last (fast only with native bf16);
    ``device="cuda"`` runs it on the GPU in float16 (a Kaggle kernel with a GPU)."""

    def __init__(self, model: ServingModel, bf16: bool = False, device: str = "cpu"):
        self.model, self.bf16, self.device = model.to(device), bf16, device
        if bf16 or device == "cuda":
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
