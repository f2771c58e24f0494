"""Classification: one logit per grade, cross-entropy, the grade of highest probability."""

from __future__ import annotations

from ..grades import GRADES, expected_grade
from .base import Head, register


@register
class Classification(Head):
    """Five probabilities (softmax); the plain grade is the most probable, the score the expected grade."""

    name = "classification"
    help = "cross-entropy over the 5 grades; the most probable grade"
    n_out = len(GRADES)
    columns = tuple(f"prob_{g}" for g in GRADES)
    categorical_targets = True
    cuts_scores = False
    argmax_grade = True

    def scores(self, outputs):
        return expected_grade(self.check(outputs))

    def own_grades(self, outputs):
        return self.check(outputs).argmax(1)

    def grade_probabilities(self, outputs):
        return self.check(outputs)

    def confidence(self, outputs):
        return self.check(outputs).max(1)

    def activate(self, raw):
        return raw.softmax(1)

    def loss(self, regression_loss, weights):
        import torch
        from fastai.losses import CrossEntropyLossFlat

        return CrossEntropyLossFlat(weight=None if weights is None else torch.as_tensor(weights, dtype=torch.float32))

    def explain_target(self, grade):
        return lambda raw: raw[int(grade)]

