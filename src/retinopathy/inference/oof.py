"""Out-of-fold predictions: every trained fold's ``oof.csv`` in one table, the outputs in it, and the CV report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..experiment import Experiment
from ..heads import get_head
from ..metrics import GRADES, GradeRule, quadratic_kappa


def load_oof(experiment: Experiment) -> pd.DataFrame:
    """Every trained fold's out-of-fold predictions in one table."""
    folds = experiment.require_trained_folds()
    return pd.concat([pd.read_csv(experiment.fold_dir(k) / "oof.csv", dtype={"id": str}) for k in folds],
                     ignore_index=True)


def oof_outputs(oof: pd.DataFrame, head: str) -> np.ndarray:
    """What the models served per OOF row: the head's output columns."""
    return get_head(head).outputs_of(oof)


def oof_values(oof: pd.DataFrame, head: str) -> np.ndarray:
    """One continuous score per OOF row, as the head computes it (a regression's value, a classifier's expected
    grade)."""
    return get_head(head).scores(oof_outputs(oof, head))


def cv_report(experiment: Experiment) -> dict:
    """QWK per fold, their mean ± std, and the pooled out-of-fold QWK with its confusion matrix, all graded by the
    plain rule of the head (what the folds' own validation measured)."""
    from sklearn.metrics import confusion_matrix

    oof = load_oof(experiment)
    head = experiment.config.head
    rule = GradeRule.plain(head)
    per_fold = {int(k): quadratic_kappa(rule(oof_outputs(g, head)), g["grade"]) for k, g in oof.groupby("fold")}
    values = np.array(list(per_fold.values()))
    grades = rule(oof_outputs(oof, head))
    confusion = confusion_matrix(oof["grade"].astype(int), grades, labels=list(GRADES)).tolist()
    return {"folds": per_fold, "mean": float(values.mean()), "std": float(values.std()),
            "pooled": quadratic_kappa(grades, oof["grade"]), "n": len(oof), "confusion": confusion}
