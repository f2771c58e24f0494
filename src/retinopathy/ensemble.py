"""Out-of-fold tuning: regression thresholds, weights of an ensemble of experiments, and EyePACS's blending of a
patient's two eyes. Everything is fitted on OOF predictions (never on the test set) and saved with the experiment.

Scores are reduced to one number per image before tuning: a regression head's value, or a classifier's expected
grade (sum of grade x probability), so experiments of either head can be averaged and cut by the same thresholds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from .train import DEFAULT_THRESHOLDS, N_GRADES, quadratic_kappa

PROB_COLUMNS = [f"prob_{g}" for g in range(N_GRADES)]
TUNING = "tuning.json"


def plain_tuning(head: str) -> dict:
    """The untuned rule: argmax for a classifier, the default thresholds for a regression head, no eye blending."""
    return {"use_values": head == "regression", "thresholds": list(DEFAULT_THRESHOLDS), "eye_blend": 0.0}


def read_tuning(directory: Path, head: str) -> dict:
    """How an experiment's outputs become grades: its ``tuning.json`` (from ``predict.tune_experiment``) in
    ``directory``, else the plain rule for its head."""
    path = directory / TUNING
    return json.loads(path.read_text()) if path.is_file() else plain_tuning(head)


def scalar_scores(scores: np.ndarray) -> np.ndarray:
    """n × 5 probabilities → expected grade; n × 1 (or n) regression values → themselves."""
    scores = np.asarray(scores, float)
    if scores.ndim == 2 and scores.shape[1] == N_GRADES:
        return scores @ np.arange(N_GRADES)
    return scores.reshape(-1)


def oof_values(oof: pd.DataFrame) -> np.ndarray:
    """One number per OOF row: the regression value, or the expected grade of the probabilities."""
    return oof["value"].to_numpy(float) if "value" in oof else scalar_scores(oof[PROB_COLUMNS].to_numpy())


def cut(values: np.ndarray, thresholds) -> np.ndarray:
    return np.digitize(np.asarray(values, float).reshape(-1), np.sort(np.asarray(thresholds, float)))


def grade_rule(regression: bool, thresholds):
    """One photograph's outputs → its grade, as the grader decides it: (n × 1) values cut at the thresholds,
    (n × 5) probabilities by argmax."""
    return (lambda out: cut(out[:, 0], thresholds)) if regression else (lambda out: out.argmax(1))


def qwk_at(values, grades, thresholds) -> float:
    return quadratic_kappa(cut(values, thresholds), grades)


def optimize_thresholds(values, grades, start=DEFAULT_THRESHOLDS) -> tuple[float, ...]:
    """Cut points maximising QWK on (OOF) values, by Nelder-Mead from ``start``. QWK is a step function of the
    thresholds, so the simplex starts wide (half a grade) and the best of the start and the result is kept."""
    values, grades = np.asarray(values, float), np.asarray(grades, int)
    start = np.asarray(start, float)
    simplex = np.vstack([start] + [start + 0.5 * np.eye(len(start))[i] for i in range(len(start))])
    result = minimize(lambda t: -qwk_at(values, grades, t), start, method="Nelder-Mead",
                      options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-6, "maxiter": 2000})
    best = np.sort(result.x)
    if qwk_at(values, grades, best) < qwk_at(values, grades, start):
        best = start
    return tuple(float(t) for t in best)


def partner_ids(ids: pd.Series) -> pd.Series:
    """EyePACS ids are ``<patient>_<left|right>``: each id's other eye."""
    ids = ids.astype(str)
    swap = {"left": "right", "right": "left"}
    patient, side = ids.str.rsplit("_", n=1).str[0], ids.str.rsplit("_", n=1).str[-1]
    return patient + "_" + side.map(swap).fillna("")


def blend_eyes(ids: pd.Series, values: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) × this eye + weight × the other eye of the same patient (where it was predicted too): a
    patient's eyes tend to share a grade, the 2015 winners' per-patient feature in its simplest form."""
    values = np.asarray(values, float)
    lookup = pd.Series(values, index=ids.astype(str).to_numpy())
    lookup = lookup[~lookup.index.duplicated()]
    other = partner_ids(ids).map(lookup).to_numpy(float)
    return np.where(np.isnan(other), values, (1 - weight) * values + weight * np.nan_to_num(other))


def tune_eye_blend(ids: pd.Series, values, grades, thresholds, weights=np.linspace(0, 0.5, 11)) -> float:
    """The blending weight with the best OOF QWK (0 when blending does not help)."""
    scores = [qwk_at(blend_eyes(ids, values, w), grades, thresholds) for w in weights]
    best = int(np.argmax(scores))
    return float(weights[best]) if scores[best] > scores[0] else 0.0


def optimize_weights(values: list[np.ndarray], grades, thresholds=DEFAULT_THRESHOLDS) -> np.ndarray:
    """Non-negative weights summing to 1 for averaging several experiments' OOF values, maximising QWK
    (Nelder-Mead on a softmax parametrisation, started from equal weights)."""
    stack = np.vstack([np.asarray(v, float) for v in values])
    if len(stack) == 1:
        return np.ones(1)

    def weights_of(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    def loss(z):
        return -qwk_at(weights_of(z) @ stack, grades, thresholds)

    result = minimize(loss, np.zeros(len(stack)), method="Nelder-Mead",
                      options={"initial_simplex": np.vstack([np.zeros(len(stack))] + list(np.eye(len(stack)))),
                               "maxiter": 500})
    best = weights_of(result.x)
    equal = np.full(len(stack), 1 / len(stack))
    return best if -loss(result.x) >= qwk_at(equal @ stack, grades, thresholds) else equal
