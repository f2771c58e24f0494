"""Out-of-fold predictions: every trained fold's ``oof.csv`` in one table, the outputs in it, and the CV report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..experiment import Experiment
from ..heads import Head
from ..metrics import GRADES, GradeRule, quadratic_kappa
from ..screening import (
    CONDITIONS,
    RESAMPLES,
    SENSITIVITY_TARGETS,
    Calibration,
    Screening,
    calibration,
    screen,
    worse_eye,
)


def load_oof(experiment: Experiment) -> pd.DataFrame:
    """Every trained fold's out-of-fold predictions in one table."""
    folds = experiment.require_trained_folds()
    return pd.concat([pd.read_csv(experiment.fold_files(k).oof, dtype={"id": str}) for k in folds],
                     ignore_index=True)


def oof_outputs(oof: pd.DataFrame, head: Head) -> np.ndarray:
    """What the models served per OOF row: the head's output columns."""
    return head.outputs_of(oof)


def oof_values(oof: pd.DataFrame, head: Head) -> np.ndarray:
    """One continuous score per OOF row, as the head computes it (a regression's value, a classifier's expected
    grade)."""
    return head.scores(oof_outputs(oof, head))


def cv_report(experiment: Experiment) -> dict:
    """QWK per fold, their mean ± std, and the pooled out-of-fold QWK with its confusion matrix, all graded by the
    plain rule of the head (what the folds' own validation measured)."""
    from sklearn.metrics import confusion_matrix

    oof = load_oof(experiment)
    head = experiment.head
    rule = GradeRule.plain(head)
    per_fold = {int(k): quadratic_kappa(rule(oof_outputs(g, head)), g["grade"]) for k, g in oof.groupby("fold")}
    values = np.array(list(per_fold.values()))
    grades = rule(oof_outputs(oof, head))
    confusion = confusion_matrix(oof["grade"].astype(int), grades, labels=list(GRADES)).tolist()
    return {"folds": per_fold, "mean": float(values.mean()), "std": float(values.std()),
            "pooled": quadratic_kappa(grades, oof["grade"]), "n": len(oof), "confusion": confusion}


@dataclass(frozen=True)
class ScreeningReport:
    """The screening figures of a set of graded images: each condition per image (and per patient, the worse
    eye, where patients have two), the cut-offs the operating points used, and a classifier's calibration."""

    where: str
    results: list[Screening]
    cutoffs: dict[str, dict[float, float]]
    calibration: Calibration | None

    def lines(self) -> list[str]:
        """What ``predict`` prints, one line per operating point."""
        lines = [line for result in self.results for line in result.lines(self.where)]
        return lines + ([self.calibration.line()] if self.calibration is not None else [])

    def columns(self) -> dict[str, float]:
        """The results table's columns: referable DR per image at the tuned grade rule, with their bounds."""
        referable = next(r for r in self.results if r.condition == "referable" and r.unit == "image")
        out = {}
        for name, estimate in (("sensitivity", referable.points[0].sensitivity),
                               ("specificity", referable.points[0].specificity), ("auc", referable.auc)):
            out.update({f"referable_{name}": estimate.value, f"referable_{name}_low": estimate.low,
                        f"referable_{name}_high": estimate.high})
        return {k: round(v, 4) for k, v in out.items()}


def screening_report(ids, outputs: np.ndarray, true_grades, rule: GradeRule, competition, where: str,
                     cutoffs: dict | None = None, resamples: int = RESAMPLES) -> ScreeningReport:
    """Screening figures of graded images (``outputs`` as the models served them) by the experiment's ``rule``:
    per image with patients resampled together where a patient has two eyes, and then per patient (the worse
    eye). ``cutoffs``: the operating points' cut-offs chosen out of fold (for a test set); else chosen here."""
    ids = [str(i) for i in ids]
    scores, predicted = rule.values(outputs, ids), rule.grades(outputs, ids)
    truth = np.asarray(true_grades, int)
    patients = np.array([competition.patient(i) for i in ids]) if competition.paired_eyes else None
    results, chosen = [], {}
    for condition, _ in CONDITIONS:
        result = screen(condition, scores, predicted, truth, patients, (cutoffs or {}).get(condition),
                        resamples=resamples)
        chosen[condition] = {t: p.cutoff for t, p in zip(SENSITIVITY_TARGETS, result.points[1:], strict=False)}
        results.append(result)
        if patients is not None:
            results.append(screen(condition, *worse_eye(patients, scores, predicted, truth), unit="patient",
                                  cutoffs=chosen[condition], resamples=resamples))
    probabilities = rule.head.grade_probabilities(outputs)
    calibrated = calibration(probabilities, truth) if probabilities is not None else None
    return ScreeningReport(where, results, chosen, calibrated)


def oof_screening(experiment: Experiment, rule: GradeRule, resamples: int = RESAMPLES,
                  oof: pd.DataFrame | None = None) -> ScreeningReport:
    """:func:`screening_report` of the out-of-fold outputs (``oof``, where the caller has read them), by the tuned
    rule."""
    oof = load_oof(experiment) if oof is None else oof
    return screening_report(oof["id"], oof_outputs(oof, rule.head), oof["grade"], rule, experiment.competition,
                            "out of fold", resamples=resamples)
