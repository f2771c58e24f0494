"""K-fold splits as a column of a CSV: stratified on the grade, and for EyePACS grouped by patient (both eyes of a
patient in one fold; otherwise the model is validated on the twin of an eye it trained on); and the training table,
the folds joined with the preprocessed images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .cleaning import apply_decisions, decisions_path
from ..competitions import Competition, read_labels
from ..errors import UserError
from ..experiment import Experiment
from ..heads import get_head, head_of_columns
from ..files import write_csv


def assign_folds(labels: pd.DataFrame, n_folds: int, seed: int, competition: Competition) -> pd.DataFrame:
    """``labels`` (id, grade) with a ``fold`` column added; deterministic from ``seed``."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold  # 1 s to import: only when splitting

    counts = labels["grade"].value_counts()
    if len(labels) < n_folds:
        raise UserError(f"{len(labels)} labelled images cannot make {n_folds} folds; lower n_folds")
    if counts.min() < n_folds:  # sklearn would only warn; say which grade is too rare to be in every fold
        rare = ", ".join(f"grade {g}: {c}" for g, c in counts.items() if c < n_folds)
        print(f"note: some grades have fewer images than folds ({rare}); they will be missing from some folds")
    folds = np.full(len(labels), -1)
    if competition.paired_eyes:
        groups = labels["id"].map(competition.patient)
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(labels, labels["grade"], groups)
    else:
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(labels, labels["grade"])
    with warnings.catch_warnings():  # scikit-learn's own warning repeats the note above
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, valid) in enumerate(splits):
            folds[valid] = fold
    return labels.assign(fold=folds)


def fold_summary(folds: pd.DataFrame) -> str:
    """A table: images per fold and the share of each grade, so an unbalanced split is seen at once."""
    table = pd.crosstab(folds["fold"], folds["grade"], normalize="index").mul(100).round(1)
    table.columns = [f"grade {g} %" for g in table.columns]
    table.insert(0, "images", folds["fold"].value_counts().sort_index())
    return table.to_string()


def make_folds(experiment: Experiment, verbose: bool = True) -> pd.DataFrame:
    """Write the experiment's folds CSV (id, grade, fold) and return it."""
    config = experiment.config
    labels = apply_decisions(read_labels(experiment.raw_dir, experiment.competition), decisions_path(experiment),
                             verbose)
    folds = assign_folds(labels, config.n_folds, config.seed, experiment.competition)
    write_csv(folds, experiment.folds_csv)
    if verbose:
        print(f"folds: {len(folds)} images in {config.n_folds} folds → {experiment.folds_csv}")
        print(fold_summary(folds))
    return folds


def training_table(experiment: Experiment) -> pd.DataFrame:
    """Folds joined with the preprocessed images: columns id, grade, fold, path (bad images left out, and said)."""
    for path, stage in ((experiment.folds_csv, "folds"), (experiment.manifest_csv, "preprocess")):
        if not path.is_file():
            raise UserError(f"{path} not found: run retinopathy {stage} with this config first")
    folds = pd.read_csv(experiment.folds_csv, dtype={"id": str})
    manifest = pd.read_csv(experiment.manifest_csv, dtype={"id": str}, keep_default_na=False)
    usable = manifest[manifest["path"] != ""][["id", "path"]]
    table = folds.merge(usable, on="id", how="inner")
    dropped = len(folds) - len(table)
    if dropped:
        print(f"note: {dropped} labelled image(s) have no preprocessed file (see {experiment.manifest_csv})")
    return table.reset_index(drop=True)


#: what a predict run leaves beside an experiment's folds: every test image's fold-averaged output
TEST_OUTPUTS = "test_outputs.csv"


def pseudo_label_rows(experiment: Experiment) -> pd.DataFrame:
    """The test images graded by the experiment named in ``pseudo_labels`` (its ``test_outputs.csv``), as training
    rows with fold -1, so no fold ever validates on them: a head that learns numbers learns the grader's score
    itself (soft targets); a classifier learns the grader's plain grade where the grader was at least
    ``pseudo_confidence`` sure of it."""
    config = experiment.config
    source = Path(config.pseudo_labels) / TEST_OUTPUTS
    if not source.is_file():
        raise UserError(f"pseudo_labels: {source} not found: run predict with that experiment's config first")
    outputs = pd.read_csv(source, dtype={"id": str})
    grader = head_of_columns(outputs.columns)
    served = grader.outputs_of(outputs)
    if get_head(config.head).categorical_targets:
        grade, keep = grader.plain_grades(served), grader.confidence(served) >= config.pseudo_confidence
    else:
        grade, keep = grader.scores(served), np.ones(len(outputs), bool)
    manifest = pd.read_csv(experiment.manifest_csv, dtype={"id": str}, keep_default_na=False)
    test = manifest[(manifest["split"] == "test") & (manifest["path"] != "")][["id", "path"]]
    rows = pd.DataFrame({"id": outputs["id"], "grade": grade, "fold": -1})[keep]
    return rows.merge(test, on="id", how="inner").reset_index(drop=True)
