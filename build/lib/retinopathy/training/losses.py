"""Losses, and the class weights that counter the grades' imbalance (in the loss or in the sampler)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..metrics import GRADES


def class_weights(grades, alpha: float) -> np.ndarray:
    """Per-grade weights ``freq ** -alpha``, scaled so the average training sample weighs 1.

    alpha = 0 keeps the natural frequencies, alpha = 1 makes every grade count equally; grades absent from the
    training set get the largest weight seen (they cannot be sampled anyway).
    """
    counts = np.bincount(np.asarray(grades, int), minlength=len(GRADES)).astype(float)
    freq = counts / counts.sum()
    weights = np.where(counts > 0, np.power(np.where(freq > 0, freq, 1.0), -alpha), 0.0)
    weights[counts == 0] = weights.max()
    return weights / (weights[np.asarray(grades, int)].mean())


class WeightedRegressionLoss(nn.Module):
    """MSE or smooth-L1 on the grade, each sample weighted by its true grade's class weight."""

    def __init__(self, kind: str = "smooth_l1", weights=None):
        super().__init__()
        self.kind = kind
        self.register_buffer("weights", torch.as_tensor(weights if weights is not None else np.ones(len(GRADES)),
                                                        dtype=torch.float32))

    def forward(self, preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
        preds, targs = preds.float().view(-1), targs.float().view(-1)
        fn = nn.functional.mse_loss if self.kind == "mse" else nn.functional.smooth_l1_loss
        loss = fn(preds, targs, reduction="none")
        w = self.weights[targs.round().clamp(0, len(GRADES) - 1).long()]
        return (loss * w).sum() / w.sum()
