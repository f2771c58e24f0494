"""Several trained experiments averaged into one submission, with weights and thresholds tuned on their OOF
predictions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import NAME_PATTERN, load_config
from ..errors import UserError
from ..experiment import Experiment
from ..metrics import TUNING, GradeRule, blend_eyes
from ..paths import ExperimentFiles
from .oof import cv_report, load_oof, oof_values
from .predict import TestPredictions, predict_test_outputs
from .submission import write_submission
from .tuning import optimize_thresholds, optimize_weights, qwk_at, tune_eye_blend, write_rule


def load_experiment(name: str, paths) -> Experiment:
    """A trained experiment by its folder's name, from the config saved beside its models: the folder named is the
    one read (a copied folder's config still carries the original's ``name``)."""
    saved = ExperimentFiles(paths.experiment(name)).config
    if not saved.is_file():
        known = sorted(p.parent.name for p in paths.models.glob(f"*/{ExperimentFiles.CONFIG}"))
        raise UserError(f"no experiment '{name}' ({saved} not found); trained ones: {', '.join(known) or 'none'}")
    return Experiment(load_config(saved).replace(name=name), paths)


def check_ensemble_name(name: str, paths) -> None:
    """Refuse an ensemble name that is a path (it names models/<name>/ and submissions/<name>.csv) or that of a
    trained experiment, whose tuning and submission it would overwrite."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise UserError(f"--name '{name[:60]}' must be a plain folder name: letters, digits and . _ + = -, 1 to 100 "
                        "of them, starting with a letter or digit (no / or ..)")
    if ExperimentFiles(paths.experiment(name)).config.is_file():
        raise UserError(f"--name '{name}' is a trained experiment ({paths.experiment(name)}): its tuning and "
                        "submission would be overwritten; choose another name")


def ensemble_experiments(experiments: list[Experiment], name: str | None = None, verbose: bool = True) -> Path | None:
    """Average several experiments' predictions with weights (and thresholds) tuned on their OOF predictions.

    Each experiment's output is reduced to one number per image (regression value or expected grade), so heads
    can be mixed; they must share the competition and the training images. Writes submissions/<name>.csv and
    models/<name>/tuning.json."""
    if len(experiments) < 2:
        raise UserError("--experiments needs at least two experiment names")
    folders = [e.dir.resolve() for e in experiments]
    if len(set(folders)) < len(folders):
        twice = next(e.config.name for e, f in zip(experiments, folders, strict=False) if folders.count(f) > 1)
        raise UserError(f"--experiments names '{twice}' twice: an ensemble of one experiment with itself is that "
                        "experiment; name different ones")
    first = experiments[0]
    name = name or "ensemble-" + "+".join(e.config.name for e in experiments)
    check_ensemble_name(name, first.paths)
    oofs = [load_oof(e).set_index("id") for e in experiments]
    ids = oofs[0].index
    for e, oof in zip(experiments[1:], oofs[1:], strict=False):
        if e.competition.slug != first.competition.slug or set(oof.index) != set(ids):
            raise UserError(f"experiments '{first.config.name}' and '{e.config.name}' were not trained on the same "
                            "images (compare their dataset and folds); only such experiments can be ensembled")
    grades = oofs[0]["grade"].to_numpy(int)
    values = [oof_values(oof.loc[ids].reset_index(), e.head) for e, oof in zip(experiments, oofs, strict=False)]
    thresholds = optimize_thresholds(np.mean(values, axis=0), grades)
    weights = optimize_weights(values, grades, thresholds)
    blended = weights @ np.vstack(values)
    thresholds = optimize_thresholds(blended, grades, thresholds)
    tuned = qwk_at(blended, grades, thresholds)
    alone = {e.config.name: best_oof_qwk(e) for e in experiments}
    # the blend is one number per image: graded as a regression value is
    rule = GradeRule(use_values=True, thresholds=tuple(thresholds), head="regression")
    if first.competition.paired_eyes:
        weight = tune_eye_blend(ids, blended, grades, thresholds)
        if weight > 0:
            blended = blend_eyes(ids, blended, weight)
            rule = GradeRule(True, optimize_thresholds(blended, grades, thresholds), weight, "regression")
            tuned = qwk_at(blended, grades, rule.thresholds)
    rule = rule.with_extra(experiments=[e.config.name for e in experiments], weights=[float(w) for w in weights],
                           fingerprints=[e.config.fingerprint for e in experiments],
                           oof_qwk_each=alone, oof_qwk_tuned=tuned, n=len(ids))
    out_dir = first.paths.experiment(name)
    write_rule(out_dir, rule)
    if verbose:
        each = ", ".join(f"{k} {v:.4f}" for k, v in alone.items())
        print(f"ensemble '{name}': weights "
              + ", ".join(f"{e.config.name} {w:.2f}" for e, w in zip(experiments, weights, strict=False))
              + f"; pooled OOF QWK {tuned:.4f} (alone: {each}) → {out_dir / TUNING}")

    predictions = [predict_test_outputs(e, verbose=verbose) for e in experiments]
    if any(p is None for p in predictions):
        return None
    order = predictions[0].ids
    test_values = np.vstack([pd.Series(e.head.scores(p.outputs), index=p.ids).reindex(order).to_numpy()
                             for e, p in zip(experiments, predictions, strict=False)])
    combined = (weights @ test_values).reshape(-1, 1)
    merged = TestPredictions(predictions[0].sample_ids, order, combined, sum(p.n_models for p in predictions))
    return write_submission(first, merged, rule.grades(combined, order), first.paths.submission(name), verbose,
                            [e.config.fingerprint for e in experiments])


def best_oof_qwk(experiment: Experiment) -> float:
    """An experiment's own best pooled OOF QWK (tuned if it was), for comparison with the ensemble."""
    path = experiment.dir / TUNING
    if path.is_file():
        return float(json.loads(path.read_text())["oof_qwk_tuned"])
    return cv_report(experiment)["pooled"]
