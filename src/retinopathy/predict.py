"""Ensemble the folds' exported learners on the test set, write the submission CSV, and report the CV score."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback

from .competitions import EYEPACS2015, GRADES, Competition, read_labels, read_test_ids
from .ensemble import (PROB_COLUMNS, TUNING, blend_eyes, cut, oof_values, optimize_thresholds, optimize_weights,
                       plain_tuning, qwk_at, read_tuning, scalar_scores, tune_eye_blend)
from .errors import UserError
from .experiment import Experiment
from .io import write_csv, write_text
from .preprocess import MANIFEST
from .train import quadratic_kappa, to_grades



def trained_folds(experiment: Experiment) -> list[int]:
    """The folds of this experiment whose exported learner exists."""
    return [k for k in range(experiment.config.n_folds) if (experiment.fold_dir(k) / "export.pkl").is_file()]


def require_trained_folds(experiment: Experiment) -> list[int]:
    """:func:`trained_folds`, or a UserError saying to train one first."""
    folds = trained_folds(experiment)
    if not folds:
        raise UserError(f"no trained fold in {experiment.dir}: run scripts/train_fold.py first")
    return folds


def _fold_scores(oof: pd.DataFrame) -> np.ndarray:
    """What a fold's model outputs per image: probabilities (n × 5) or a regression value (n × 1)."""
    return oof[PROB_COLUMNS].to_numpy() if "prob_0" in oof else oof[["value"]].to_numpy()


def load_oof(experiment: Experiment) -> pd.DataFrame:
    """Every trained fold's out-of-fold predictions in one table."""
    folds = require_trained_folds(experiment)
    return pd.concat([pd.read_csv(experiment.fold_dir(k) / "oof.csv", dtype={"id": str}) for k in folds],
                     ignore_index=True)


def cv_report(experiment: Experiment) -> dict:
    """QWK per fold, their mean ± std, and the pooled out-of-fold QWK."""
    oof = load_oof(experiment)
    per_fold = {int(k): quadratic_kappa(_fold_scores(g), g["grade"]) for k, g in oof.groupby("fold")}
    values = np.array(list(per_fold.values()))
    from sklearn.metrics import confusion_matrix
    confusion = confusion_matrix(oof["grade"].astype(int), to_grades(_fold_scores(oof)), labels=list(GRADES)).tolist()
    return {"folds": per_fold, "mean": float(values.mean()), "std": float(values.std()),
            "pooled": quadratic_kappa(_fold_scores(oof), oof["grade"]), "n": len(oof), "confusion": confusion}


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
    from .engines import load_learner_quietly

    folds = require_trained_folds(experiment)
    cpu = not torch.cuda.is_available()
    return {k: load_learner_quietly(experiment.fold_dir(k) / "export.pkl", cpu=cpu) for k in folds}


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


@dataclass
class TestScores:
    """Fold-averaged model outputs on the test set, in sample-submission order where images were readable."""

    sample_ids: list[str]
    ids: list[str]
    scores: np.ndarray  # n × 5 probabilities or n × 1 regression values
    n_models: int


def test_scores(experiment: Experiment, verbose: bool = True) -> TestScores | None:
    """Every fold's learner on the test set, averaged (probabilities for classification, values for regression).
    None (and said) where the competition folder has no test set, e.g. a labelled subset."""
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
    return TestScores(list(sample_ids), test["id"].tolist(), np.mean(outputs, axis=0), len(learners))


def test_grades(experiment: Experiment, scores: TestScores) -> np.ndarray:
    """Grades from averaged test outputs, post-processed exactly as tuned on the OOF predictions."""
    tuning = load_tuning(experiment)
    if not tuning["use_values"]:
        return to_grades(scores.scores)
    values = scalar_scores(scores.scores)
    if tuning["eye_blend"] > 0:
        values = blend_eyes(pd.Series(scores.ids), values, tuning["eye_blend"])
    return cut(values, tuning["thresholds"])


def write_submission(experiment: Experiment, scores: TestScores, grades: np.ndarray, path: Path,
                     verbose: bool = True) -> Path:
    """The submission CSV in the sample submission's ids and order, validated, written atomically."""
    competition = experiment.competition
    sample_ids = scores.sample_ids
    predicted = dict(zip(scores.ids, grades))
    unreadable = [i for i in sample_ids if i not in predicted]
    if unreadable:
        # Kaggle needs a row for every id: give the most common training grade and say so.
        fallback = int(read_labels(experiment.raw_dir, competition)["grade"].mode()[0])
        print(f"warning: {len(unreadable)} test image(s) could not be read (e.g. '{unreadable[0]}', see "
              f"{experiment.processed_dir / MANIFEST}); predicted the most common grade, {fallback}, for them")
        predicted.update({i: fallback for i in unreadable})
    submission = pd.DataFrame({competition.id_column: sample_ids,
                               competition.label_column: [int(predicted[i]) for i in sample_ids]})
    validate_submission(submission, sample_ids, competition, str(path))
    write_csv(submission, path)
    if verbose:
        counts = submission[competition.label_column].value_counts().reindex(GRADES, fill_value=0)
        print(f"submission: {len(submission)} rows from {scores.n_models} model(s) → {path}")
        print("  predicted grades: " + ", ".join(f"{g}: {c}" for g, c in counts.items()))
    return path


def predict_test(experiment: Experiment, verbose: bool = True) -> Path | None:
    """Average every fold's predictions on the test set and write the validated submission CSV."""
    scores = test_scores(experiment, verbose)
    if scores is None:
        return None
    return write_submission(experiment, scores, test_grades(experiment, scores), experiment.submission, verbose)


# ----------------------------------------------------------------------------------------- OOF tuning
def load_tuning(experiment: Experiment) -> dict:
    return read_tuning(experiment.dir, experiment.config.head)


def tune_experiment(experiment: Experiment, verbose: bool = True) -> dict:
    """Fit the post-processing on the OOF predictions and save it as ``models/<exp>/tuning.json``: thresholds for
    a regression head (Nelder-Mead from 0.5, 1.5, 2.5, 3.5), and for EyePACS the blending of a patient's two eyes,
    kept only where it raises the OOF QWK. Prints the OOF QWK before and after."""
    oof = load_oof(experiment)
    grades, values = oof["grade"].to_numpy(int), oof_values(oof)
    regression = experiment.config.head == "regression"
    before = quadratic_kappa(_fold_scores(oof), grades)
    tuning = plain_tuning(experiment.config.head)
    best = before
    if regression:
        tuning["thresholds"] = list(optimize_thresholds(values, grades))
        best = qwk_at(values, grades, tuning["thresholds"])
    if experiment.competition.slug == EYEPACS2015.slug:
        start = tuning["thresholds"] if regression else optimize_thresholds(values, grades)
        weight = tune_eye_blend(oof["id"], values, grades, start)
        if weight > 0:
            blended = blend_eyes(oof["id"], values, weight)
            thresholds = optimize_thresholds(blended, grades, start)
            blended_qwk = qwk_at(blended, grades, thresholds)
            if verbose:
                print(f"eye blending (weight {weight:.2f} on the other eye): OOF QWK {best:.4f} → {blended_qwk:.4f}")
            if blended_qwk > best:
                tuning.update(use_values=True, thresholds=list(thresholds), eye_blend=weight)
                best = blended_qwk
    tuning.update(oof_qwk=before, oof_qwk_tuned=best, n=len(oof))
    write_text(experiment.dir / TUNING, json.dumps(tuning, indent=1))
    if verbose and (regression or tuning["eye_blend"] > 0):
        blend = f", eye blend {tuning['eye_blend']:.2f}" if tuning["eye_blend"] > 0 else ""
        print(f"tuned on OOF: thresholds {', '.join(f'{t:.3f}' for t in tuning['thresholds'])}{blend}; "
              f"pooled OOF QWK {before:.4f} → {best:.4f} ({experiment.dir / TUNING})")
    return tuning


def print_cv_report(cv: dict) -> None:
    """QWK per fold, mean ± std, pooled OOF QWK, and the pooled confusion matrix (rows: true grade)."""
    per_fold = ", ".join(f"fold {k}: {v:.4f}" for k, v in cv["folds"].items())
    print(f"CV QWK: {cv['mean']:.4f} ± {cv['std']:.4f} ({per_fold}); pooled out-of-fold QWK {cv['pooled']:.4f} "
          f"on {cv['n']} images")
    if "confusion" in cv:
        matrix = pd.DataFrame(cv["confusion"], index=[f"true {g}" for g in GRADES], columns=[f"pred {g}" for g in GRADES])
        print("out-of-fold confusion matrix:\n" + matrix.to_string())


def git_commit(where: Path | None = None) -> str:
    """The checkout's commit (with ``-dirty`` when files differ from it), or ``unknown`` outside git."""
    where = where or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def append_results(experiment: Experiment, cv: dict, tuning: dict | None, submission: Path | None) -> Path:
    """One row per report in ``reports/results.csv`` and its Markdown twin ``reports/results.md``: scores, the
    config's main choices, where the full config is, and the git commit, so any submission can be traced."""
    config = experiment.config
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "experiment": config.name,
           "competition": experiment.competition.slug, "dataset": config.dataset_name,
           "folds": f"{len(cv['folds'])}/{config.n_folds}", "cv_qwk_mean": round(cv["mean"], 4),
           "cv_qwk_std": round(cv["std"], 4), "oof_qwk": round(cv["pooled"], 4),
           "oof_qwk_tuned": round(tuning["oof_qwk_tuned"], 4) if tuning else None,
           "arch": config.arch, "size": config.image_size, "preprocess": config.preprocess, "head": config.head,
           "balance": config.balance, "epochs": config.epochs, "lr": config.lr,
           "config": str(experiment.dir / "config.yaml"), "submission": str(submission) if submission else "",
           "commit": git_commit()}
    csv_path = experiment.paths.reports / "results.csv"
    table = pd.read_csv(csv_path) if csv_path.is_file() else pd.DataFrame()
    table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
    write_csv(table, csv_path)
    shown = table.drop(columns=["config"]).fillna("")
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in shown.itertuples(index=False)]
    write_text(experiment.paths.reports / "results.md",
               "# Results\n\nEvery CV report, newest last (`reports/results.csv` has the config paths).\n\n"
               + "\n".join(lines) + "\n")
    return csv_path


def report_and_predict(experiment: Experiment, verbose: bool = True) -> tuple[dict, dict, Path | None]:
    """The prediction stage: CV report, OOF tuning, the submission, and a row in the results table.
    Returns (CV report, tuning, submission path or None)."""
    cv = cv_report(experiment)
    print_cv_report(cv)
    tuning = tune_experiment(experiment, verbose)
    submission = predict_test(experiment, verbose)
    table = append_results(experiment, cv, tuning, submission)
    if verbose:
        print(f"results table: {table} (and results.md)")
    return cv, tuning, submission


# ----------------------------------------------------------------------------------------- several experiments
def load_experiment(name: str, paths) -> Experiment:
    """A trained experiment by name, from the config saved beside its models."""
    from .config import load_config
    saved = paths.experiment(name) / "config.yaml"
    if not saved.is_file():
        known = sorted(p.parent.name for p in paths.models.glob("*/config.yaml"))
        raise UserError(f"no experiment '{name}' ({saved} not found); trained ones: {', '.join(known) or 'none'}")
    return Experiment(load_config(saved), paths)


def ensemble_experiments(experiments: list[Experiment], name: str | None = None, verbose: bool = True) -> Path | None:
    """Average several experiments' predictions with weights (and thresholds) tuned on their OOF predictions.

    Each experiment's output is reduced to one number per image (regression value or expected grade), so heads
    can be mixed; they must share the competition and the training images. Writes submissions/<name>.csv and
    models/<name>/tuning.json."""
    if len(experiments) < 2:
        raise UserError("--experiments needs at least two experiment names")
    first = experiments[0]
    name = name or "ensemble-" + "+".join(e.config.name for e in experiments)
    oofs = [load_oof(e).set_index("id") for e in experiments]
    ids = oofs[0].index
    for e, oof in zip(experiments[1:], oofs[1:]):
        if e.competition.slug != first.competition.slug or set(oof.index) != set(ids):
            raise UserError(f"experiments '{first.config.name}' and '{e.config.name}' were not trained on the same "
                            "images (compare their dataset and folds); only such experiments can be ensembled")
    grades = oofs[0]["grade"].to_numpy(int)
    values = [oof_values(oof.loc[ids].reset_index()) for oof in oofs]
    thresholds = optimize_thresholds(np.mean(values, axis=0), grades)
    weights = optimize_weights(values, grades, thresholds)
    blended = weights @ np.vstack(values)
    thresholds = optimize_thresholds(blended, grades, thresholds)
    tuned = qwk_at(blended, grades, thresholds)
    alone = {e.config.name: load_tuning_or_plain(e) for e in experiments}
    tuning = {"use_values": True, "thresholds": list(thresholds), "eye_blend": 0.0,
              "experiments": [e.config.name for e in experiments], "weights": [float(w) for w in weights],
              "oof_qwk_each": alone, "oof_qwk_tuned": tuned, "n": len(ids)}
    if first.competition.slug == EYEPACS2015.slug:
        weight = tune_eye_blend(pd.Series(ids), blended, grades, thresholds)
        if weight > 0:
            tuning["eye_blend"] = weight
            blended = blend_eyes(pd.Series(ids), blended, weight)
            tuning["thresholds"] = list(optimize_thresholds(blended, grades, thresholds))
            tuning["oof_qwk_tuned"] = qwk_at(blended, grades, tuning["thresholds"])
    out_dir = first.paths.experiment(name)
    write_text(out_dir / TUNING, json.dumps(tuning, indent=1))
    if verbose:
        each = ", ".join(f"{k} {v:.4f}" for k, v in alone.items())
        print(f"ensemble '{name}': weights " + ", ".join(f"{e.config.name} {w:.2f}" for e, w in zip(experiments, weights))
              + f"; pooled OOF QWK {tuning['oof_qwk_tuned']:.4f} (alone: {each}) → {out_dir / TUNING}")

    scores = [test_scores(e, verbose=verbose) for e in experiments]
    if any(s is None for s in scores):
        return None
    order = scores[0].ids
    test_values = np.vstack([pd.Series(scalar_scores(s.scores), index=s.ids).reindex(order).to_numpy() for s in scores])
    combined = weights @ test_values
    if tuning["eye_blend"] > 0:
        combined = blend_eyes(pd.Series(order), combined, tuning["eye_blend"])
    merged = TestScores(scores[0].sample_ids, order, combined.reshape(-1, 1), sum(s.n_models for s in scores))
    return write_submission(first, merged, cut(combined, tuning["thresholds"]), first.paths.submission(name), verbose)


def load_tuning_or_plain(experiment: Experiment) -> float:
    """An experiment's own best OOF QWK (tuned if it was), for comparison with the ensemble."""
    path = experiment.dir / TUNING
    if path.is_file():
        return float(json.loads(path.read_text())["oof_qwk_tuned"])
    return cv_report(experiment)["pooled"]
