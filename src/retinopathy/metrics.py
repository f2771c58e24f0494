"""The grade scale, the competitions' metric, and the one rule that turns model outputs into grades.

Every stage that grades (training's validation metric, the OOF report and tuning, the submission, the
interpretation page, the web app, the ONNX export check) goes through :class:`GradeRule`, so a classifier with tuned
thresholds or EyePACS eye blending is graded the same way everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .competitions import EYEPACS2015
from .errors import UserError
from .grades import DEFAULT_THRESHOLDS, GRADE_NAMES, GRADES, cut
from .heads import Head, get_head
from .paths import ExperimentFiles

__all__ = ["GRADES", "GRADE_NAMES", "DEFAULT_THRESHOLDS", "TUNING", "GradeRule", "blend_eyes", "cut",
           "quadratic_kappa"]

#: where an experiment keeps its post-processing, fitted on its out-of-fold predictions
TUNING = ExperimentFiles.TUNING


def blend_eyes(ids, values, weight: float) -> np.ndarray:
    """(1 - weight) x this eye + weight x the other eye of the same patient (where it was predicted too): a
    patient's eyes tend to share a grade, the 2015 winners' per-patient feature in its simplest form."""
    values = np.asarray(values, float)
    lookup: dict[str, float] = {}
    for image_id, value in zip(map(str, ids), values, strict=False):
        lookup.setdefault(image_id, float(value))
    other = np.array([lookup.get(EYEPACS2015.other_eye(i), np.nan) for i in map(str, ids)], float)
    return np.where(np.isnan(other), values, (1 - weight) * values + weight * np.nan_to_num(other))


# ----------------------------------------------------------------------------------------- the rule
@dataclass(frozen=True)
class GradeRule:
    """How one experiment's outputs become grades.

    ``head``: the head whose served outputs these are (it gives the continuous score and the untuned grade); a
    name is looked up once, here.
    ``use_values``: cut the score at ``thresholds`` instead of the head's untuned rule. ``eye_blend``: mix in the
    other eye of the same patient first, where both eyes are graded together (a submission, the OOF report).
    """

    use_values: bool = False
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    eye_blend: float = 0.0
    head: Head = "classification"
    #: what the tuning measured, kept with the rule so that tuning.json round-trips
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "head", get_head(self.head))

    @classmethod
    def plain(cls, head: str | Head) -> GradeRule:
        """The untuned rule of a head (a classifier's most probable grade, a regression cut at 0.5, 1.5, ...)."""
        return cls(head=head)

    @classmethod
    def from_dict(cls, tuning: dict, head: str | Head = "classification") -> GradeRule:
        """A rule from the mapping ``tuning.json`` holds (``head`` where the file names none)."""
        known = {"use_values", "thresholds", "eye_blend", "head"}
        return cls(bool(tuning.get("use_values", False)),
                   tuple(float(t) for t in tuning.get("thresholds", DEFAULT_THRESHOLDS)),
                   float(tuning.get("eye_blend", 0.0)), tuning.get("head", head),
                   {k: v for k, v in tuning.items() if k not in known})

    @classmethod
    def read(cls, experiment_dir: str | Path, head: str | Head) -> GradeRule:
        """The experiment's tuned rule (``tuning.json`` in ``experiment_dir``), else the plain rule for its head."""
        path = Path(experiment_dir) / TUNING
        if not path.is_file():
            return cls.plain(head)
        try:
            tuning = json.loads(path.read_text())
            if not isinstance(tuning, dict):
                raise ValueError(f"a {type(tuning).__name__}, not a mapping")
            rule = cls.from_dict(tuning, head)
            if not all(np.isfinite(rule.thresholds)) or len(rule.thresholds) != len(DEFAULT_THRESHOLDS):
                raise ValueError(f"thresholds {list(rule.thresholds)}")
        except (ValueError, TypeError, UserError, UnicodeDecodeError) as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
            raise UserError(f"{path}: not a grade rule ({why}): delete it and run retinopathy predict again (it "
                            "tunes the rule anew)") from None
        return rule

    def to_dict(self) -> dict:
        """The mapping written to ``tuning.json``."""
        return {"use_values": self.use_values, "thresholds": [float(t) for t in self.thresholds],
                "eye_blend": self.eye_blend, "head": self.head.name, **self.extra}

    def with_extra(self, **extra) -> GradeRule:
        """The same rule carrying more of what the tuning measured."""
        return GradeRule(self.use_values, self.thresholds, self.eye_blend, self.head, {**self.extra, **extra})

    def values(self, outputs, ids=None) -> np.ndarray:
        """The number each image is cut at: its head's score, blended with its other eye when ``ids`` are given."""
        values = self.head.scores(outputs)
        if self.eye_blend > 0 and ids is not None:
            values = blend_eyes(ids, values, self.eye_blend)
        return values

    def grades(self, outputs, ids=None) -> np.ndarray:
        """Grades of n images from their served outputs; ``ids`` enable eye blending."""
        if not self.use_values and self.eye_blend == 0:
            return self.head.plain_grades(outputs)
        return cut(self.values(outputs, ids), self.thresholds)

    __call__ = grades


# ----------------------------------------------------------------------------------------- scores
#: (i - j)² for every pair of grades: the disagreement weights of the quadratic kappa
_QUADRATIC = np.subtract.outer(np.arange(len(GRADES)), np.arange(len(GRADES))) ** 2.0


def quadratic_kappa(grades, targets) -> float:
    """Quadratic weighted kappa of predicted ``grades`` against ``targets``: scikit-learn's
    ``cohen_kappa_score(weights="quadratic")`` formula on a confusion matrix counted with ``np.bincount`` (the
    threshold tuner calls it thousands of times, and scikit-learn's argument checks cost 4 ms a call; a test holds
    the two equal)."""
    grades = np.asarray(grades).reshape(-1).round().astype(int)
    targets = np.asarray(targets).reshape(-1).round().astype(int)
    if len(np.unique(np.concatenate([grades, targets]))) < 2:
        return 0.0  # kappa is undefined when a single grade is seen: say "no agreement beyond chance"
    n = len(GRADES)
    known = (grades >= 0) & (grades < n) & (targets >= 0) & (targets < n)  # sklearn leaves other labels out too
    confusion = np.bincount(targets[known] * n + grades[known], minlength=n * n).reshape(n, n).astype(float)
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / confusion.sum()
    return float(1 - np.sum(_QUADRATIC * confusion) / np.sum(_QUADRATIC * expected))
