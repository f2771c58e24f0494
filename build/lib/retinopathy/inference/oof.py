"""Out-of-fold predictions: every trained fold's ``oof.csv`` in one table, the outputs in it, and the CV report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..experiment import Experiment
from ..metrics import GRADES, GradeRule, quadratic_kappa, scalar_scores

PROB_COLUMNS = [f"prob_{g}" for g in GRADES]


def load_oof(experiment: Experiment) -> pd.DataFrame:
    """Every trained fold's out-of-fold predictions in one table."""
    folds = experiment.require_trained_folds()
    return pd.concat([pd.read_csv(experiment.fold_dir(k) / "oof.csv", dtype={"id": str}) for k in folds],
                     ignore_index=True)


def oof_outputs(oof: pd.DataFrame) -> np.ndarray:
    """What the models output per OOF row: probabilities (n × 5) or a regression value (n × 1)."""
    return oof[PROB_COLUMNS].to_numpy(float) if "prob_0" in oof else oof[["value"]].to_numpy(float)


def oof_values(oof: pd.DataFrame) -> np.ndarray:
    """One number per OOF row: the regression value, or the expected grade of the probabilities."""
    return scalar_scores(oof_outputs(oof))


def cv_report(experiment: Experiment) -> dict:
    """QWK per fold, their mean ± std, and the pooled out-of-fold QWK with its confusion matrix, all graded by the
    plain rule of the head (what the folds' own validation measured)."""
    from sklearn.metrics import confusion_matrix

    oof = load_oof(experiment)
    rule = GradeRule.plain(experiment.config.head)
    per_fold = {int(k): quadratic_kappa(rule(oof_outputs(g)), g["grade"]) for k, g in oof.groupby("fold")}
    values = np.array(list(per_fold.values()))
    grades = rule(oof_outputs(oof))
    confusion = confusion_matrix(oof["grade"].astype(int), grades, labels=list(GRADES)).tolist()
    return {"folds": per_fold, "mean": float(values.mean()), "std": float(values.std()),
            "pooled": quadratic_kappa(grades, oof["grade"]), "n": len(oof), "confusion": confusion}
