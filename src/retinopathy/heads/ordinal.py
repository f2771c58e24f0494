"""Ordinal (cumulative link): one output per step of the scale, P(grade >= k) for k = 1..4, each learnt as a binary
question (as the ordinal "multi-label" heads of APTOS 2019); the grade is how many steps are more likely than not."""

from __future__ import annotations

import numpy as np

from ..grades import GRADES
from .base import Head, as_weights, register, sample_weights


class OrdinalLoss:
    """Binary cross-entropy on each step ``grade >= k`` (a soft target ``t`` gives step k the value
    ``clip(t - k + 1, 0, 1)``), each sample weighted by its grade's class weight."""

    def __init__(self, weights=None):
        self.weights = as_weights(weights)

    def __call__(self, raw, targets):
        import torch
        import torch.nn.functional as F

        targets = targets.float().view(-1)
        steps = torch.arange(1, raw.shape[1] + 1, device=raw.device, dtype=torch.float32)
        levels = (targets[:, None] - steps[None, :] + 1).clamp(0, 1)
        per_sample = F.binary_cross_entropy_with_logits(raw.float(), levels, reduction="none").sum(1)
        w = sample_weights(self.weights, targets)
        return (per_sample * w).sum() / w.sum()


@register
class Ordinal(Head):
    """Four probabilities P(grade >= 1..4); the score is their sum (the expected grade)."""

    name = "ordinal"
    help = "cumulative link: P(grade >= k) for k = 1..4 (binary cross-entropy each); grade = steps above 0.5"
    n_out = len(GRADES) - 1
    columns = tuple(f"p_ge_{k}" for k in GRADES[1:])
    cuts_scores = False

    def scores(self, outputs):
        return self.check(outputs).sum(1)

    def own_grades(self, outputs):
        return (self.check(outputs) > 0.5).sum(1)

    def confidence(self, outputs):
        return np.abs(2 * self.check(outputs) - 1).min(1)

    def activate(self, raw):
        return raw.sigmoid()

    def loss(self, regression_loss, weights):
        return OrdinalLoss(weights)

    def explain_target(self, grade):
        return lambda raw: raw.sigmoid().sum()
