"""What a screening study reports about a grader, beside the competition's QWK: sensitivity and specificity for
referable and vision-threatening retinopathy at fixed operating points, the area under the ROC curve of the
model's continuous score, each with a 95 % bootstrap interval (patients resampled where a patient has two eyes),
per image and per patient (the worse eye), and the calibration of a classifier's probabilities.

The conditions follow the international clinical scale the competitions grade on: **referable** is moderate
non-proliferative retinopathy or worse (grade ≥ 2, the threshold of Gulshan et al. 2016 and Ting et al. 2017);
**vision-threatening** is severe non-proliferative or proliferative retinopathy (grade ≥ 3). Neither competition
grades macular oedema, which the clinical definitions also count, so these are retinopathy-only figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: (name, lowest grade that counts): the two conditions reported
CONDITIONS = (("referable", 2), ("vision-threatening", 3))
#: the conditions' names as a person reads them
CONDITION_NAMES = {"referable": "referable DR (grade ≥ 2)", "vision-threatening": "vision-threatening DR (grade ≥ 3)"}
#: operating points chosen on the out-of-fold outputs: the cut-off on the score that reaches each sensitivity
SENSITIVITY_TARGETS = (0.90, 0.95)
#: bootstrap resamples behind each interval
RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """An estimate and its 95 % bootstrap interval (NaN where it cannot be computed: no positive or negative)."""

    value: float
    low: float
    high: float

    def percent(self) -> str:
        """``91.2 % (88.0–94.1)``"""
        return f"{100 * self.value:.1f} % ({100 * self.low:.1f}–{100 * self.high:.1f})"

    def plain(self) -> str:
        """``0.962 (0.954–0.969)``"""
        return f"{self.value:.3f} ({self.low:.3f}–{self.high:.3f})"


def bootstrap(statistic: Callable[..., float], arrays: Sequence[np.ndarray], groups: np.ndarray | None = None,
              resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """``statistic(*arrays)`` and its 95 % percentile interval over ``resamples`` resamples of the rows, or of the
    ``groups`` (a patient's images are drawn together) where given; resamples where the statistic is undefined
    (NaN) are left out."""
    arrays = [np.asarray(a) for a in arrays]
    value = float(statistic(*arrays))
    rng = np.random.default_rng(seed)
    if groups is None:
        draws = (rng.integers(0, len(arrays[0]), len(arrays[0])) for _ in range(resamples))
    else:
        codes, members = np.unique(np.asarray(groups), return_inverse=True)
        order = np.argsort(members, kind="stable")
        starts = np.searchsorted(members[order], np.arange(len(codes) + 1))
        rows_of = [order[starts[g]:starts[g + 1]] for g in range(len(codes))]
        draws = (np.concatenate([rows_of[g] for g in rng.integers(0, len(codes), len(codes))])
                 for _ in range(resamples))
    values = np.array([statistic(*(a[d] for a in arrays)) for d in draws], float)
    values = values[np.isfinite(values)]
    if not len(values):
        return Interval(value, float("nan"), float("nan"))
    low, high = np.quantile(values, [0.025, 0.975])
    return Interval(value, float(low), float(high))


def sensitivity(predicted: np.ndarray, positive: np.ndarray) -> float:
    """The share of positives predicted positive (NaN without positives)."""
    return float(predicted[positive].mean()) if positive.any() else float("nan")


def specificity(predicted: np.ndarray, positive: np.ndarray) -> float:
    """The share of negatives predicted negative (NaN without negatives)."""
    return float((~predicted[~positive]).mean()) if (~positive).any() else float("nan")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (NaN unless both classes are present)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores)) if 0 < positive.sum() < len(positive) else float("nan")


def cutoff_for_sensitivity(scores: np.ndarray, positive: np.ndarray, target: float) -> float:
    """The highest cut-off on ``scores`` (positive at or above it) whose sensitivity reaches ``target``."""
    ranked = np.sort(np.asarray(scores, float)[positive])[::-1]
    if not len(ranked):
        return float("nan")
    return float(ranked[min(len(ranked) - 1, int(np.ceil(target * len(ranked))) - 1)])


@dataclass(frozen=True)
class OperatingPoint:
    """One way to call a condition: the tuned grade rule, or a cut-off on the score, with its sensitivity and
    specificity."""

    name: str
    cutoff: float | None
    sensitivity: Interval
    specificity: Interval


@dataclass(frozen=True)
class Screening:
    """One condition's figures on one set of images (or patients)."""

    condition: str
    unit: str
    n: int
    positives: int
    auc: Interval
    points: list[OperatingPoint] = field(default_factory=list)

    def lines(self, where: str) -> list[str]:
        """What ``predict`` prints: the AUC, then one line per operating point."""
        head = (f"{CONDITION_NAMES[self.condition]}, per {self.unit}, {where} ({self.n} {self.unit}s, "
                f"{self.positives} with it): AUC {self.auc.plain()}")
        return [head] + [f"  {p.name}: sensitivity {p.sensitivity.percent()}, specificity {p.specificity.percent()}"
                         for p in self.points]


def screen(condition: str, scores, predicted_grades, true_grades, groups=None, cutoffs: dict | None = None,
           unit: str = "image", resamples: int = RESAMPLES, seed: int = 0) -> Screening:
    """One condition (a name of :data:`CONDITIONS`) on these images: AUC of the continuous ``scores``, and
    sensitivity / specificity at the grade rule's ``predicted_grades`` and at the cut-offs on the score that
    reach each of :data:`SENSITIVITY_TARGETS` (``cutoffs``: target → cut-off chosen elsewhere, e.g. out of fold
    for a test set; else chosen on these images). ``groups``: resample these together (a patient's eyes)."""
    at_least = dict(CONDITIONS)[condition]
    scores, predicted_grades = np.asarray(scores, float), np.asarray(predicted_grades, int)
    positive = np.asarray(true_grades, int) >= at_least

    def point(name, called, cutoff=None):
        sens = bootstrap(lambda c, p: sensitivity(c, p), (called, positive), groups, resamples, seed)
        spec = bootstrap(lambda c, p: specificity(c, p), (called, positive), groups, resamples, seed)
        return OperatingPoint(name, cutoff, sens, spec)

    points = [point("tuned grade rule", predicted_grades >= at_least)]
    for target in SENSITIVITY_TARGETS:
        cutoff = (cutoffs or {}).get(target, cutoff_for_sensitivity(scores, positive, target))
        if np.isfinite(cutoff):
            points.append(point(f"score ≥ {cutoff:.2f} (chosen for {target:.0%} sensitivity out of fold)",
                                scores >= cutoff, cutoff))
    auc = bootstrap(auroc, (scores, positive), groups, resamples, seed)
    return Screening(condition, unit, len(positive), int(positive.sum()), auc, points)


def worse_eye(patients, scores, predicted_grades, true_grades) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patient, what a screening programme grades: the worse eye's score, predicted and true grade."""
    table = pd.DataFrame({"patient": np.asarray(patients), "score": np.asarray(scores, float),
                          "pred": np.asarray(predicted_grades, int), "true": np.asarray(true_grades, int)})
    worst = table.groupby("patient", sort=True).max()
    return worst["score"].to_numpy(), worst["pred"].to_numpy(), worst["true"].to_numpy()


@dataclass(frozen=True)
class Calibration:
    """How far a classifier's stated confidence is from how often it is right: the expected calibration error and
    the reliability table (per bin of top-class probability: mean confidence, accuracy, count)."""

    ece: float
    table: pd.DataFrame

    def line(self) -> str:
        """One line for ``predict``."""
        worst = self.table.loc[(self.table["confidence"] - self.table["accuracy"]).abs().idxmax()]
        lean = "over" if worst["confidence"] > worst["accuracy"] else "under"
        return (f"calibration: expected calibration error {self.ece:.3f} (bins of the top grade's probability); "
                f"most {lean}confident where it says {worst['confidence']:.0%} and is right {worst['accuracy']:.0%}"
                f" of {int(worst['count'])} times")


def calibration(probabilities, true_grades, bins: int = 10) -> Calibration:
    """Expected calibration error of the most probable grade over ``bins`` equal-width bins of its probability
    (Guo et al. 2017), with the reliability table behind it."""
    probabilities = np.asarray(probabilities, float)
    confidence, predicted = probabilities.max(1), probabilities.argmax(1)
    right = predicted == np.asarray(true_grades, int)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = [{"low": edges[b], "high": edges[b + 1], "confidence": confidence[which == b].mean(),
             "accuracy": right[which == b].mean(), "count": int((which == b).sum())}
            for b in range(bins) if (which == b).any()]
    table = pd.DataFrame(rows)
    ece = float((table["count"] * (table["confidence"] - table["accuracy"]).abs()).sum() / len(confidence))
    return Calibration(ece, table)
