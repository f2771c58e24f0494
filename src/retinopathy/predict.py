"""Ensemble the folds' exported learners on the test set, write the submission CSV, and report the CV score."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback

from .competitions import GRADES, Competition, read_labels, read_test_ids
from .errors import UserError
from .experiment import Experiment
from .io import write_csv
from .preprocess import MANIFEST
from .train import DEFAULT_THRESHOLDS, N_GRADES, quadratic_kappa, to_grades

PROB_COLUMNS = [f"prob_{g}" for g in range(N_GRADES)]


def trained_folds(experiment: Experiment) -> list[int]:
    """The folds of this experiment whose exported learner exists."""
    return [k for k in range(experiment.config.n_folds) if (experiment.fold_dir(k) / "export.pkl").is_file()]


def _fold_scores(oof: pd.DataFrame) -> np.ndarray:
    """What a fold's model outputs per image: probabilities (n × 5) or a regression value (n × 1)."""
    return oof[PROB_COLUMNS].to_numpy() if "prob_0" in oof else oof[["value"]].to_numpy()


def load_oof(experiment: Experiment) -> pd.DataFrame:
    """Every trained fold's out-of-fold predictions in one table."""
    folds = trained_folds(experiment)
    if not folds:
        raise UserError(f"no trained fold in {experiment.dir}: run scripts/train_fold.py first")
    return pd.concat([pd.read_csv(experiment.fold_dir(k) / "oof.csv", dtype={"id": str}) for k in folds],
                     ignore_index=True)


def cv_report(experiment: Experiment) -> dict:
    """QWK per fold, their mean ± std, and the pooled out-of-fold QWK."""
    oof = load_oof(experiment)
    per_fold = {int(k): quadratic_kappa(_fold_scores(g), g["grade"]) for k, g in oof.groupby("fold")}
    values = np.array(list(per_fold.values()))
    return {"folds": per_fold, "mean": float(values.mean()), "std": float(values.std()),
            "pooled": quadratic_kappa(_fold_scores(oof), oof["grade"]), "n": len(oof)}


class FlipInput(Callback):
    """Test-time augmentation: predict on flipped inputs too (a fundus photo flipped is still a fundus photo)."""

    order = 1

    def __init__(self, dims: tuple[int, ...]):
        self.dims = dims

    def before_batch(self):
        self.learn.xb = (self.xb[0].flip(self.dims),)


def predict_items(learn, items: pd.DataFrame, tta: bool = False) -> np.ndarray:
    """One learner's outputs on rows with a ``path`` column: probabilities (n × 5) or values (n × 1)."""
    dl = learn.dls.test_dl(items, bs=64, num_workers=0)
    views = [None, (-1,), (-2,)] if tta else [None]
    outputs = []
    for dims in views:
        cbs = [FlipInput(dims)] if dims else None
        preds, _ = learn.get_preds(dl=dl, cbs=cbs)
        outputs.append(preds.float().numpy())
    out = np.mean(outputs, axis=0)
    return out.reshape(len(items), -1)


def load_fold_learners(experiment: Experiment):
    from fastai.learner import load_learner

    folds = trained_folds(experiment)
    if not folds:
        raise UserError(f"no trained fold in {experiment.dir}: run scripts/train_fold.py first")
    cpu = not torch.cuda.is_available()
    with warnings.catch_warnings():
        # fastai warns that pickles can run code: these are this experiment's own exports, named by its config.
        warnings.filterwarnings("ignore", message=".*insecure pickle.*")
        return {k: load_learner(experiment.fold_dir(k) / "export.pkl", cpu=cpu) for k in folds}


def validate_submission(submission: pd.DataFrame, sample_ids: list[str], competition: Competition,
                        source: str = "submission") -> None:
    """Refuse a submission Kaggle would reject or mis-score: ids, order, columns and grades must be exact."""
    expected = [competition.id_column, competition.label_column]
    if list(submission.columns) != expected:
        raise UserError(f"{source}: columns are {','.join(map(str, submission.columns))}; expected {','.join(expected)}")
    ids = submission[competition.id_column].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise UserError(f"{source}: duplicate id '{dup.iloc[0]}' (row {dup.index[0] + 2}); each id must appear once")
    missing = sorted(set(sample_ids) - set(ids))
    extra = sorted(set(ids) - set(sample_ids))
    if missing or extra:
        what = (f"{len(missing)} id(s) of the sample submission missing (e.g. '{missing[0]}')" if missing
                else f"{len(extra)} id(s) not in the sample submission (e.g. '{extra[0]}')")
        raise UserError(f"{source}: {what}; predict every test image and nothing else")
    if ids.tolist() != list(sample_ids):
        raise UserError(f"{source}: ids are not in the sample submission's order")
    grades = pd.to_numeric(submission[competition.label_column], errors="coerce")
    bad = ~grades.isin(GRADES) | (submission[competition.label_column].astype(str).str.strip() == "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{source}, row {row + 2}: grade '{submission[competition.label_column].iloc[row]}' is not "
                        "an integer 0-4")


def predict_test(experiment: Experiment, verbose: bool = True) -> Path | None:
    """Average every fold's predictions on the test set and write the validated submission CSV.

    Returns None (and says so) where the competition folder has no test set, e.g. a labelled subset.
    """
    competition = experiment.competition
    sample_ids = read_test_ids(experiment.raw_dir, competition)
    if sample_ids is None:
        if verbose:
            print(f"no {competition.sample_submission} in {experiment.raw_dir}: no test set, no submission written")
        return None
    manifest_path = experiment.processed_dir / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path} not found: run scripts/preprocess.py with this config first")
    manifest = pd.read_csv(manifest_path, dtype={"id": str}, keep_default_na=False)
    test = manifest[(manifest["split"] == "test") & (manifest["path"] != "")]
    test = test.set_index("id").reindex([i for i in sample_ids if i in set(test["id"])]).reset_index()

    learners = load_fold_learners(experiment)
    outputs = [predict_items(learn, test[["id", "path"]], tta=experiment.config.tta) for learn in learners.values()]
    grades = to_grades(np.mean(outputs, axis=0), thresholds=experiment_thresholds(experiment))

    predicted = dict(zip(test["id"], grades))
    unreadable = [i for i in sample_ids if i not in predicted]
    if unreadable:
        # Kaggle needs a row for every id: give the most common training grade and say so.
        fallback = int(read_labels(experiment.raw_dir, competition)["grade"].mode()[0])
        print(f"warning: {len(unreadable)} test image(s) could not be read (e.g. '{unreadable[0]}', see "
              f"{manifest_path}); predicted the most common grade, {fallback}, for them")
        predicted.update({i: fallback for i in unreadable})
    submission = pd.DataFrame({competition.id_column: sample_ids,
                               competition.label_column: [int(predicted[i]) for i in sample_ids]})
    validate_submission(submission, sample_ids, competition, str(experiment.submission))
    write_csv(submission, experiment.submission)
    if verbose:
        counts = submission[competition.label_column].value_counts().reindex(GRADES, fill_value=0)
        print(f"submission: {len(submission)} rows from {len(learners)} fold(s) → {experiment.submission}")
        print("  predicted grades: " + ", ".join(f"{g}: {c}" for g, c in counts.items()))
    return experiment.submission


def experiment_thresholds(experiment: Experiment) -> tuple[float, ...]:
    """Regression cut points: tuned ones saved with the experiment, else the defaults."""
    path = experiment.dir / "thresholds.csv"
    if path.is_file():
        return tuple(pd.read_csv(path)["threshold"].astype(float))
    return DEFAULT_THRESHOLDS


def print_cv_report(cv: dict) -> None:
    per_fold = ", ".join(f"fold {k}: {v:.4f}" for k, v in cv["folds"].items())
    print(f"CV QWK: {cv['mean']:.4f} ± {cv['std']:.4f} ({per_fold}); pooled out-of-fold QWK {cv['pooled']:.4f} "
          f"on {cv['n']} images")


def report_and_predict(experiment: Experiment) -> Path | None:
    """The prediction stage: print the CV report, then write the submission."""
    print_cv_report(cv_report(experiment))
    return predict_test(experiment)
