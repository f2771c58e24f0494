"""The grade scale both competitions share and the one way numbers are cut into grades."""

from __future__ import annotations

import numpy as np

GRADES = (0, 1, 2, 3, 4)
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative DR")
#: a continuous score is cut into grades at these points unless thresholds were tuned on OOF predictions
DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)


def cut(values, thresholds) -> np.ndarray:
    """Grades from numbers: how many (sorted) thresholds each value is at or above."""
    return np.digitize(np.asarray(values, float).reshape(-1), np.sort(np.asarray(thresholds, float)))


def expected_grade(probabilities) -> np.ndarray:
    """The mean grade under n x 5 probabilities: one continuous score per image."""
    return np.asarray(probabilities, float) @ np.arange(len(GRADES))
