"""Multi-task: a classifier and a regression on one body (as BloodAxe's 10th-place APTOS 2019 solution), trained
on the sum of both losses; the score is the mean of the classifier's expected grade and the regression's value."""

from __future__ import annotations

from ..grades import GRADES, expected_grade
from .base import Head, as_weights, register, sample_weights
from .regression import RegressionLoss

LOW, HIGH = -0.5, len(GRADES) - 0.5


def value_of(raw_value):
    """The regression output in (-0.5, 4.5), as fastai's SigmoidRange gives a plain regression head."""
    return LOW + (HIGH - LOW) * raw_value.sigmoid()


class MultiTaskLoss:
    """Cross-entropy on the grade (its nearest whole grade) plus the regression loss on the value."""

    def __init__(self, kind: str = "smooth_l1", weights=None):
        self.weights, self.regression = as_weights(weights), RegressionLoss(kind, weights)

    def __call__(self, raw, targets):
        import torch.nn.functional as F

        targets = targets.float().view(-1)
        grades = targets.round().clamp(0, len(GRADES) - 1).long()
        w = sample_weights(self.weights, targets)
        ce = (F.cross_entropy(raw[:, :len(GRADES)].float(), grades, reduction="none") * w).sum() / w.sum()
        return ce + self.regression(value_of(raw[:, len(GRADES)].float()), targets)


@register
class MultiTask(Head):
    """Five probabilities and a value; the plain grade cuts their mean score at 0.5, 1.5, 2.5, 3.5."""

    name = "multitask"
    help = "classification and regression on one body (summed losses); grade from the mean of both scores"
    n_out = len(GRADES) + 1
    columns = (*(f"prob_{g}" for g in GRADES), "value")

    def scores(self, outputs):
        outputs = self.check(outputs)
        return (expected_grade(outputs[:, :len(GRADES)]) + outputs[:, len(GRADES)]) / 2

    def grade_probabilities(self, outputs):
        return self.check(outputs)[:, :len(GRADES)]

    def confidence(self, outputs):
        return self.grade_probabilities(outputs).max(1)

    def activate(self, raw):
        import torch

        return torch.cat([raw[:, :len(GRADES)].softmax(1), value_of(raw[:, len(GRADES):])], 1)

    def loss(self, regression_loss, weights):
        return MultiTaskLoss(regression_loss, weights)

    def explain_target(self, grade):
        import torch

        steps = torch.arange(len(GRADES), dtype=torch.float32)

        def score(raw):
            return ((raw[:len(GRADES)].softmax(0) * steps.to(raw.device)).sum() + value_of(raw[len(GRADES)])) / 2
        return score
