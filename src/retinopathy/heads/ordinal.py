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
    """Four probabilities P(grade >= 1..4), made monotone (sorted, each step at most the one before). They give the
    five grade probabilities P(k) = P(>= k) - P(>= k+1); the grade is their median (how many steps are more likely
    than not), and the score the interpolated median, which the default thresholds 0.5, 1.5, ... cut into that very
    grade: one grade, one score and one set of probabilities that agree."""

    name = "ordinal"
    help = "cumulative link: P(grade >= k) for k = 1..4 (binary cross-entropy each); grade = steps above 0.5"
    n_out = len(GRADES) - 1
    columns = tuple(f"p_ge_{k}" for k in GRADES[1:])
    cuts_scores = False  # the untuned rule is the median grade; tuning keeps it (measured best with the sampler)

    def cumulative(self, outputs) -> np.ndarray:
        """P(grade >= 1..4) clipped to 0-1 and made non-increasing by sorting them (the rearrangement of crossing
        quantile curves), which keeps how many steps are above 0.5: the grade the network's outputs say."""
        return -np.sort(-np.clip(self.check(outputs), 0, 1), axis=1)

    def grade_probabilities(self, outputs):
        steps = self.cumulative(outputs)
        n = len(steps)
        full = np.hstack([np.ones((n, 1)), steps, np.zeros((n, 1))])  # P(>= 0) = 1, P(>= 5) = 0
        return full[:, :-1] - full[:, 1:]

    def scores(self, outputs):
        steps = self.cumulative(outputs)
        median = (steps > 0.5).sum(1)
        at = np.hstack([np.ones((len(steps), 1)), steps])[np.arange(len(steps)), median]  # P(>= median) > 0.5
        share = self.grade_probabilities(outputs)[np.arange(len(steps)), median]  # P(median) >= at - 0.5 > 0
        return median - 0.5 + (at - 0.5) / np.maximum(share, 1e-12)

    def valid_outputs(self, outputs):
        outputs = self.check(outputs)
        return super().valid_outputs(outputs) & ((outputs >= 0) & (outputs <= 1)).all(1)

    def confidence(self, outputs):
        return np.abs(2 * self.cumulative(outputs) - 1).min(1)

    def activate(self, raw):
        return raw.sigmoid()

    def loss(self, regression_loss, weights):
        return OrdinalLoss(weights)

    def explain_target(self, grade):
        return lambda raw: raw.sigmoid().sum()
