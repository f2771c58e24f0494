"""Post-processing fitted on out-of-fold predictions (never on the test set) and saved with the experiment as
``tuning.json``: regression thresholds, EyePACS's blending of a patient's two eyes, and the weights of an ensemble of
experiments. The result is a :class:`~retinopathy.metrics.GradeRule`.

Scores are reduced to one number per image before tuning (the head's score: a regression's value, a classifier's
expected grade, ...), so experiments of any head can be averaged and cut by the same thresholds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from ..experiment import Experiment
from ..files import write_text
from ..metrics import DEFAULT_THRESHOLDS, GRADES, TUNING, GradeRule, blend_eyes, cut, quadratic_kappa
from .oof import load_oof, oof_outputs, oof_values


def read_rule(experiment: Experiment) -> GradeRule:
    """The experiment's grade rule: its ``tuning.json``, else the plain rule of its head."""
    return GradeRule.read(experiment.dir, experiment.config.head)


def write_rule(directory: Path, rule: GradeRule) -> Path:
    """Save a grade rule as ``tuning.json`` in ``directory`` (atomically)."""
    return write_text(Path(directory) / TUNING, json.dumps(rule.to_dict(), indent=1))


def qwk_at(values, grades, thresholds) -> float:
    """QWK of numbers cut into grades at ``thresholds``."""
    return quadratic_kappa(cut(values, thresholds), grades)


#: every grade the labels hold is given to at least this share of as many images as carry it: a tuned rule
#: never makes a grade unreachable (one threshold above every output the model gives)
MIN_SHARE = 0.25
#: how far above a threshold an output must lie to count as reaching the grade above it (grade units): a fold
#: ensemble averages its folds, so its outputs on new images rarely reach the extremes one fold gives out of fold
TIE_MARGIN = 0.05


def unreachable_grades(values, grades, thresholds, min_share: float = MIN_SHARE) -> list[int]:
    """The grades present in ``grades`` that the rule gives to fewer than ``min_share`` of as many images as
    carry them (at least one; none at all with ``min_share=0``, QWK alone)."""
    if min_share <= 0:
        return []
    labelled = np.bincount(np.asarray(grades, int), minlength=len(GRADES))
    # Counted with the thresholds a hair higher: a threshold on a value many outputs share (a regression saturated
    # at its range's end) reaches them out of fold but none of an ensemble's averaged outputs on new images.
    given = np.bincount(cut(values, np.sort(thresholds) + TIE_MARGIN), minlength=len(GRADES))
    needed = np.maximum(1, np.ceil(min_share * labelled))
    return [g for g in range(len(GRADES)) if labelled[g] and given[g] < needed[g]]


def optimize_thresholds(values, grades, start=DEFAULT_THRESHOLDS, min_share: float = MIN_SHARE) -> tuple[float, ...]:
    """Cut points maximising QWK on (OOF) values among those that leave every labelled grade reachable
    (:func:`unreachable_grades`), by Nelder-Mead from ``start`` and from the values' quantiles at the labels'
    proportions (reachable unless outputs pile up). QWK is a step function of the thresholds, so each simplex
    starts wide (half a grade) and the best start or result is kept; the thresholds come back in order."""
    values, grades = np.asarray(values, float), np.asarray(grades, int)
    labelled = np.bincount(grades, minlength=len(GRADES))
    quantiles = np.quantile(values, np.cumsum(labelled)[:-1] / len(grades))

    def loss(t):  # each grade left unreachable costs more than any QWK can gain
        return -qwk_at(values, grades, np.sort(t)) + 2 * len(unreachable_grades(values, grades, t, min_share))

    candidates = []
    for begin in (np.asarray(start, float), quantiles):
        simplex = np.vstack([begin] + [begin + 0.5 * np.eye(len(begin))[i] for i in range(len(begin))])
        result = minimize(loss, begin, method="Nelder-Mead",
                          options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-6, "maxiter": 2000})
        candidates += [begin, np.asarray(result.x, float)]
    best = min(candidates, key=loss)  # the first of equals: the given start where nothing beats it
    return tuple(float(t) for t in np.sort(best))


#: the eye-blending weights tried on the out-of-fold outputs
EYE_BLEND_WEIGHTS = tuple(np.linspace(0, 0.5, 11))


def tune_eye_blend(ids, values, grades, thresholds, weights=EYE_BLEND_WEIGHTS) -> float:
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


def tune_experiment(experiment: Experiment, verbose: bool = True, write: bool = True) -> GradeRule:
    """Fit the post-processing on the OOF predictions and save it as ``models/<exp>/tuning.json`` (unless not
    ``write``: the caller adds to it first): thresholds on the score of a head whose plain rule cuts it
    (Nelder-Mead from 0.5, 1.5, 2.5, 3.5), and for EyePACS the blending of a patient's two eyes, kept only where it
    raises the OOF QWK. Prints the OOF QWK before and after, and the grades no threshold could make reachable."""
    oof = load_oof(experiment)
    name = experiment.head
    grades, values = oof["grade"].to_numpy(int), oof_values(oof, name)
    cuts = name.cuts_scores
    rule = GradeRule.plain(name)
    before = quadratic_kappa(rule(oof_outputs(oof, name)), grades)
    best = before
    if cuts:
        rule = GradeRule(use_values=True, thresholds=optimize_thresholds(values, grades), head=name)
        best = qwk_at(values, grades, rule.thresholds)
    if experiment.competition.paired_eyes:
        start = rule.thresholds if cuts else optimize_thresholds(values, grades)
        weight = tune_eye_blend(oof["id"], values, grades, start)
        if weight > 0:
            blended = blend_eyes(oof["id"], values, weight)
            thresholds = optimize_thresholds(blended, grades, start)
            blended_qwk = qwk_at(blended, grades, thresholds)
            if verbose:
                print(f"eye blending (weight {weight:.2f} on the other eye): OOF QWK {best:.4f} → {blended_qwk:.4f}")
            if blended_qwk > best:
                rule = GradeRule(use_values=True, thresholds=tuple(thresholds), eye_blend=weight, head=name)
                best = blended_qwk
    rule = rule.with_extra(oof_qwk=before, oof_qwk_tuned=best, n=len(oof), fingerprint=experiment.config.fingerprint)
    if write:
        write_rule(experiment.dir, rule)
    if verbose and (cuts or rule.eye_blend > 0):
        blend = f", eye blend {rule.eye_blend:.2f}" if rule.eye_blend > 0 else ""
        print(f"tuned on OOF: thresholds {', '.join(f'{t:.3f}' for t in rule.thresholds)}{blend}; "
              f"pooled OOF QWK {before:.4f} → {best:.4f} ({experiment.dir / TUNING})")
    left = unreachable_grades(blend_eyes(oof["id"], values, rule.eye_blend) if rule.eye_blend > 0 else values,
                              grades, rule.thresholds) if cuts else []
    if verbose and left:
        print(f"warning: grade {', '.join(map(str, left))} stays out of reach: the model's outputs give it to fewer "
              f"than {MIN_SHARE:.0%} of the images labelled with it, whatever the thresholds; train longer or "
              "balance the grades (balance=sampler)")
    return rule
