"""Regression: the grade as one number in (-0.5, 4.5), cut into grades at thresholds tuned on OOF."""

from __future__ import annotations

from ..grades import GRADES
from .base import Head, as_weights, register, sample_weights


class RegressionLoss:
    """MSE or smooth-L1 on the grade, each sample weighted by its true grade's class weight."""

    def __init__(self, kind: str = "smooth_l1", weights=None):
        self.kind, self.weights = kind, as_weights(weights)

    def __call__(self, preds, targets):
        import torch.nn.functional as F

        preds, targets = preds.float().view(-1), targets.float().view(-1)
        fn = F.mse_loss if self.kind == "mse" else F.smooth_l1_loss
        w = sample_weights(self.weights, targets)
        return (fn(preds, targets, reduction="none") * w).sum() / w.sum()


@register
class Regression(Head):
    """One value per image; the plain grade cuts it at 0.5, 1.5, 2.5, 3.5."""

    name = "regression"
    help = "the grade as a number (regression_loss), cut by thresholds tuned on OOF"
    n_out = 1
    columns = ("value",)
    y_range = (-0.5, len(GRADES) - 0.5)

    def scores(self, outputs):
        return self.check(outputs)[:, 0]

    def activate(self, raw):
        return raw

    def loss(self, regression_loss, weights):
        return RegressionLoss(regression_loss, weights)

    def explain_target(self, grade):
        return lambda raw: raw[0]
