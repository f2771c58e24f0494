"""The grade scale, the competitions' metric, and the one rule that turns model outputs into grades.

Every stage that grades (training's validation metric, the OOF report and tuning, the submission, the
interpretation page, the web app, the ONNX export check) goes through :class:`GradeRule`, so a classifier with tuned
thresholds or EyePACS eye blending is graded the same way everywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

GRADES = (0, 1, 2, 3, 4)
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative DR")
#: Regression values are cut into grades at these points unless thresholds were tuned on OOF predictions.
DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
#: where an experiment keeps its post-processing, fitted on its out-of-fold predictions
TUNING = "tuning.json"


# ----------------------------------------------------------------------------------------- outputs → numbers
def scalar_scores(outputs) -> np.ndarray:
    """One number per image: n × 5 probabilities → the expected grade; n × 1 (or n) regression values → themselves."""
    outputs = np.asarray(outputs, float)
    if outputs.ndim == 2 and outputs.shape[1] == len(GRADES):
        return outputs @ np.arange(len(GRADES))
    return outputs.reshape(-1)


def cut(values, thresholds) -> np.ndarray:
    """Grades from numbers: how many (sorted) thresholds each value is at or above."""
    return np.digitize(np.asarray(values, float).reshape(-1), np.sort(np.asarray(thresholds, float)))


def partner_ids(ids) -> np.ndarray:
    """EyePACS ids are ``<patient>_<left|right>``: each id's other eye (an empty string where there is none)."""
    out = []
    for image_id in map(str, ids):
        patient, _, side = image_id.rpartition("_")
        other = {"left": "right", "right": "left"}.get(side)
        out.append(f"{patient}_{other}" if other else "")
    return np.asarray(out, dtype=object)


def blend_eyes(ids, values, weight: float) -> np.ndarray:
    """(1 - weight) × this eye + weight × the other eye of the same patient (where it was predicted too): a
    patient's eyes tend to share a grade, the 2015 winners' per-patient feature in its simplest form."""
    values = np.asarray(values, float)
    lookup: dict[str, float] = {}
    for image_id, value in zip(map(str, ids), values):
        lookup.setdefault(image_id, float(value))
    other = np.array([lookup.get(p, np.nan) for p in partner_ids(ids)], float)
    return np.where(np.isnan(other), values, (1 - weight) * values + weight * np.nan_to_num(other))


# ----------------------------------------------------------------------------------------- the rule
@dataclass(frozen=True)
class GradeRule:
    """How one experiment's outputs become grades.

    ``use_values``: cut one number per image (a regression value, or a classifier's expected grade) at
    ``thresholds`` instead of taking a classifier's argmax; regression outputs are always cut. ``eye_blend``: mix in
    the other eye of the same patient first, where both eyes are graded together (a submission, the OOF report).
    """

    use_values: bool = False
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    eye_blend: float = 0.0
    #: what the tuning measured, kept with the rule so that tuning.json round-trips
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def plain(cls, head: str) -> "GradeRule":
        """The untuned rule: argmax for a classifier, the default thresholds for a regression head."""
        return cls(use_values=head == "regression")

    @classmethod
    def from_dict(cls, tuning: dict) -> "GradeRule":
        """A rule from the mapping ``tuning.json`` holds."""
        known = {"use_values", "thresholds", "eye_blend"}
        return cls(bool(tuning.get("use_values", False)),
                   tuple(float(t) for t in tuning.get("thresholds", DEFAULT_THRESHOLDS)),
                   float(tuning.get("eye_blend", 0.0)), {k: v for k, v in tuning.items() if k not in known})

    @classmethod
    def read(cls, experiment_dir: str | Path, head: str) -> "GradeRule":
        """The experiment's tuned rule (``tuning.json`` in ``experiment_dir``), else the plain rule for its head."""
        path = Path(experiment_dir) / TUNING
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else cls.plain(head)

    def to_dict(self) -> dict:
        """The mapping written to ``tuning.json``."""
        out = asdict(self)
        out.pop("extra")
        out["thresholds"] = [float(t) for t in self.thresholds]
        return {**out, **self.extra}

    def with_extra(self, **extra) -> "GradeRule":
        """The same rule carrying more of what the tuning measured."""
        return GradeRule(self.use_values, self.thresholds, self.eye_blend, {**self.extra, **extra})

    def values(self, outputs, ids=None) -> np.ndarray:
        """The number each image is cut at: its scalar score, blended with its other eye when ``ids`` are given."""
        values = scalar_scores(outputs)
        if self.eye_blend > 0 and ids is not None:
            values = blend_eyes(ids, values, self.eye_blend)
        return values

    def grades(self, outputs, ids=None) -> np.ndarray:
        """Grades of n images from their outputs (n × 5 probabilities or n × 1 values); ``ids`` enable eye blending."""
        outputs = np.asarray(outputs, float)
        if outputs.ndim == 1:
            outputs = outputs.reshape(-1, 1)
        if outputs.shape[1] == len(GRADES) and not self.use_values:
            return outputs.argmax(1)
        return cut(self.values(outputs, ids), self.thresholds)

    __call__ = grades


# ----------------------------------------------------------------------------------------- scores
def quadratic_kappa(grades, targets) -> float:
    """Quadratic weighted kappa of predicted ``grades`` against ``targets`` (scikit-learn's implementation)."""
    from sklearn.metrics import cohen_kappa_score

    grades = np.asarray(grades).reshape(-1).round().astype(int)
    targets = np.asarray(targets).reshape(-1).round().astype(int)
    if len(np.unique(np.concatenate([grades, targets]))) < 2:
        return 0.0  # kappa is undefined when a single grade is seen: say "no agreement beyond chance"
    return float(cohen_kappa_score(targets, grades, weights="quadratic", labels=list(GRADES)))


def _plain_grades(outputs) -> np.ndarray:
    """Untuned grades of raw outputs, whichever head made them (the shape tells)."""
    outputs = np.asarray(outputs, float)
    head = "classification" if outputs.ndim == 2 and outputs.shape[1] == len(GRADES) else "regression"
    return GradeRule.plain(head).grades(outputs)


def output_kappa(outputs, targets) -> float:
    """QWK of raw model outputs graded by the plain rule: the validation metric while training."""
    return quadratic_kappa(_plain_grades(outputs), targets)


def output_accuracy(outputs, targets) -> float:
    """Share of images whose plainly-graded output equals the target grade."""
    return float((_plain_grades(outputs) == np.asarray(targets).reshape(-1).round().astype(int)).mean())


def output_error_rate(outputs, targets) -> float:
    """1 - :func:`output_accuracy`."""
    return 1.0 - output_accuracy(outputs, targets)
