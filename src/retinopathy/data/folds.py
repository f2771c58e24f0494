"""K-fold splits as a column of a CSV: stratified on the grade and grouped, so that every copy of a photograph (found
from the hashes preprocessing records) and, for EyePACS, both eyes of a patient land in one fold: otherwise the
model is validated on a photograph, or the twin of an eye, it trained on; and the training table, the folds joined
with the preprocessed images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..competitions import Competition, read_labels
from ..errors import UserError
from ..experiment import Experiment
from ..files import write_csv
from ..heads import head_of_columns
from ..paths import MANIFEST, ExperimentFiles
from .cleaning import apply_decisions, decisions_path
from .duplicates import apply_policy, copies_of, copy_groups, duplicates_table, summary
from .manifest import read_manifest_file


def assign_folds(labels: pd.DataFrame, n_folds: int, seed: int, competition: Competition) -> pd.DataFrame:
    """``labels`` (id, grade; optionally ``group``: rows of one group share a fold) with a ``fold`` column added;
    deterministic from ``seed``. On EyePACS a patient's two eyes also share a fold."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold  # 1 s to import: only here

    counts = labels["grade"].value_counts()
    if len(labels) < n_folds:
        raise UserError(f"{len(labels)} labelled images cannot make {n_folds} folds; lower n_folds")
    if counts.min() < n_folds:  # sklearn would only warn; say which grade is too rare to be in every fold
        rare = ", ".join(f"grade {g}: {c}" for g, c in counts.items() if c < n_folds)
        print(f"note: some grades have fewer images than folds ({rare}); they will be missing from some folds")
    groups = labels["group"].to_numpy() if "group" in labels else np.arange(len(labels))
    if competition.paired_eyes:  # a patient's eyes and every copy of either: one connected group
        patients = pd.factorize(labels["id"].map(competition.patient))[0]
        groups = joined_groups(groups, patients)
    if len(np.unique(groups)) < n_folds:  # scikit-learn's ValueError, said as what to change
        unit = "patients (with their copies)" if competition.paired_eyes else "distinct photographs"
        raise UserError(f"{len(labels)} labelled images are {len(np.unique(groups))} {unit}, too few for "
                        f"{n_folds} folds; lower n_folds")
    folds = np.full(len(labels), -1)
    grades = labels["grade"].round().astype(int)
    if (counts < n_folds).all():  # scikit-learn cannot stratify when every grade is rarer than the folds
        raise UserError(f"every grade has fewer labelled images than the {n_folds} folds (" + ", ".join(
            f"grade {g}: {c}" for g, c in counts.sort_index().items()) + "): label more images or lower n_folds")
    if len(np.unique(groups)) == len(labels):  # nothing to keep together: plain stratified folds balance best
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(labels, grades)
    else:
        splits = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(labels, grades, groups)
    with warnings.catch_warnings():  # scikit-learn's own warning repeats the note above
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, valid) in enumerate(splits):
            folds[valid] = fold
    return labels.assign(fold=folds)


def joined_groups(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One group label per row joining two groupings: rows that share a label in either share a group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(a)
    _, a_ids = np.unique(a, return_inverse=True)
    _, b_ids = np.unique(b, return_inverse=True)
    # a bipartite graph: rows to their label in a (n + i) and in b (n + len(a's labels) + j)
    rows = np.concatenate([np.arange(n), np.arange(n)])
    cols = np.concatenate([n + a_ids, n + a_ids.max() + 1 + b_ids])
    size = n + a_ids.max() + 1 + b_ids.max() + 1
    _, labels = connected_components(coo_matrix((np.ones(2 * n), (rows, cols)), shape=(size, size)), directed=False)
    return labels[:n]


def fold_summary(folds: pd.DataFrame) -> str:
    """A table: images per fold and the share of each grade, so an unbalanced split is seen at once."""
    table = pd.crosstab(folds["fold"], folds["grade"], normalize="index").mul(100).round(1)
    table.columns = [f"grade {g} %" for g in table.columns]
    table.insert(0, "images", folds["fold"].value_counts().sort_index())
    return table.to_string()


def gradable_mask(manifest: pd.DataFrame) -> pd.Series:
    """Per manifest row, whether the photograph can be graded (the column reads back from CSV as text)."""
    return manifest["gradable"].astype(str).str.lower().isin(("true", "1"))


def read_manifest(experiment: Experiment) -> pd.DataFrame:
    """The preprocessing stage's manifest of this experiment's images (the hashes and gradability the folds need)."""
    if not experiment.manifest_csv.is_file():
        raise UserError(f"{experiment.manifest_csv} not found: run retinopathy preprocess with this config first "
                        "(the folds keep copies of a photograph together, found from what it records)")
    manifest = read_manifest_file(experiment.processed_dir)
    if "phash" not in manifest:
        raise UserError(f"{experiment.manifest_csv} was written by an earlier release: run retinopathy preprocess "
                        "with this config again (it examines each photograph once more)")
    return manifest


def find_copies(experiment: Experiment, manifest: pd.DataFrame, labels: pd.DataFrame, verbose: bool) -> pd.DataFrame:
    """The table of copies among the training and test photographs, written to ``data/cleaning/`` and summed up in
    one line."""
    images = manifest[["id", "split", "phash"]].merge(labels[["id", "grade"]], on="id", how="left")
    images.loc[images["split"] == "test", "grade"] = np.nan
    table = duplicates_table(images)
    table["grade"] = table["grade"].astype("Int64")
    path = write_csv(table, experiment.paths.duplicates(experiment.config.dataset_name))
    if verbose:
        print(f"duplicates: {summary(table)} → {path}")
    return table


def make_folds(experiment: Experiment, verbose: bool = True) -> pd.DataFrame:
    """Write the experiment's folds CSV (id, grade, fold, group) and return it: copies of a photograph grouped
    (and treated as ``conflicting_grades`` says where their grades differ), ungradable photographs left out where
    ``exclude_ungradable`` asks."""
    config = experiment.config
    labels = apply_decisions(read_labels(experiment.raw_dir, experiment.competition), decisions_path(experiment),
                             verbose)
    manifest = read_manifest(experiment)
    find_copies(experiment, manifest, labels, verbose)
    train = manifest[manifest["split"] == "train"].drop_duplicates("id").set_index("id")
    hashes = labels["id"].map(train["phash"]).fillna("")
    before = len(labels)
    labels = apply_policy(labels, copy_groups(hashes), config.conflicting_grades,
                          numeric=not experiment.head.categorical_targets)
    if verbose and len(labels) < before:
        print(f"folds: conflicting_grades={config.conflicting_grades}: {before - len(labels)} image(s) left out")
    if config.exclude_ungradable:
        gradable = labels["id"].map(gradable_mask(train)).fillna(True)
        if verbose:
            print(f"folds: exclude_ungradable: {int((~gradable).sum())} ungradable photograph(s) left out")
        labels = labels[gradable.to_numpy()].reset_index(drop=True)
    folds = assign_folds(labels, config.n_folds, config.seed, experiment.competition)
    write_csv(folds[["id", "grade", "fold", "group"]], experiment.folds_csv)
    if verbose:
        print(f"folds: {len(folds)} images in {config.n_folds} folds, every copy of a photograph in one fold → "
              f"{experiment.folds_csv}")
        print(fold_summary(folds))
    return folds


def training_table(experiment: Experiment) -> pd.DataFrame:
    """Folds joined with the preprocessed images: columns id, grade, fold, path (bad images left out, and said)."""
    for path, stage in ((experiment.folds_csv, "folds"), (experiment.manifest_csv, "preprocess")):
        if not path.is_file():
            raise UserError(f"{path} not found: run retinopathy {stage} with this config first")
    folds = pd.read_csv(experiment.folds_csv, dtype={"id": str})
    manifest = read_manifest_file(experiment.processed_dir)
    usable = manifest[manifest["path"] != ""][["id", "path"]]
    table = folds.merge(usable, on="id", how="inner")
    dropped = len(folds) - len(table)
    if dropped:
        print(f"note: {dropped} labelled image(s) have no preprocessed file (see {experiment.manifest_csv})")
    return table.reset_index(drop=True)


#: what a predict run leaves beside an experiment's folds: every test image's fold-averaged output
TEST_OUTPUTS = ExperimentFiles.TEST_OUTPUTS


def pseudo_label_rows(experiment: Experiment) -> pd.DataFrame:
    """The test images graded by the experiment named in ``pseudo_labels`` (its ``test_outputs.csv``), as training
    rows with fold -1, so no fold ever validates on them: a head that learns numbers learns the grader's score
    itself (soft targets); a classifier learns the grader's plain grade where the grader was at least
    ``pseudo_confidence`` sure of it."""
    config = experiment.config
    source = Path(config.pseudo_labels) / TEST_OUTPUTS
    if not source.is_file():
        raise UserError(f"pseudo_labels: {source} not found: run predict with that experiment's config first")
    try:
        outputs = pd.read_csv(source, dtype={"id": str})
        grader = head_of_columns(outputs.columns)
        served = np.asarray(grader.outputs_of(outputs), dtype=float)
    except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"pseudo_labels: {source}: not a predict run's test outputs ({str(e).splitlines()[0][:80]}):"
                        " run predict with that experiment's config again") from None
    bad = ~grader.valid_outputs(served) if len(served) else np.zeros(0, bool)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"pseudo_labels: {source}, row {row + 2}: outputs {np.round(served[row], 3).tolist()} are "
                        "not a grader's (scores lie in 0-4, probabilities in 0-1): run predict with that "
                        "experiment's config again")
    if experiment.head.categorical_targets:
        grade, keep = grader.plain_grades(served), grader.confidence(served) >= config.pseudo_confidence
    else:
        grade, keep = grader.scores(served), np.ones(len(outputs), bool)
    manifest = read_manifest_file(experiment.processed_dir)
    test = manifest[(manifest["split"] == "test") & (manifest["path"] != "")][["id", "path"]]
    rows = pd.DataFrame({"id": outputs["id"], "grade": grade, "fold": -1})[keep]
    return rows.merge(test, on="id", how="inner").reset_index(drop=True)


def extra_data_rows(experiment: Experiment, fold: int | None = None) -> pd.DataFrame:
    """The training images of every ``extra_data`` set as training rows with fold -1 (no fold validates on them,
    so CV and the thresholds stay on the target competition), with their set's sampling ``share``; photographs
    preprocessing found ungradable or could not read are left out, and so (given a ``fold``) is every copy of one
    of that fold's validation photographs, found by its perceptual hash: a model never trains on a photograph it
    is validated on. Each row's ``source`` names its set, and ``copies`` counts the copies left out."""
    validation = _validation_hashes(experiment, fold) if fold is not None else pd.Series(dtype=str)
    frames, copies = [], {}
    for raw, competition, processed, share in experiment.extra_sets():
        if not (processed / MANIFEST).is_file():
            raise UserError(f"extra_data: {processed / MANIFEST} not found: run retinopathy preprocess with this "
                            "config first (it prepares the extra sets' images too)")
        manifest = read_manifest_file(processed)
        usable = manifest[(manifest["split"] == "train") & (manifest["path"] != "") & gradable_mask(manifest)]
        labels = read_labels(raw, competition)
        rows = labels.merge(usable[["id", "path", "phash"]], on="id", how="inner")
        copy = copies_of(rows["phash"], validation)
        copies[raw.name] = int(copy.sum())
        frames.append(rows[~copy].assign(fold=-1, share=share, source=raw.name)[
            ["id", "grade", "fold", "path", "share", "source"]])
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["id", "grade", "fold", "path", "share", "source"])
    table.attrs["copies"] = copies
    return table


def _validation_hashes(experiment: Experiment, fold: int) -> pd.Series:
    """The perceptual hashes of one fold's validation photographs."""
    folds = pd.read_csv(experiment.folds_csv, dtype={"id": str})
    manifest = read_manifest_file(experiment.processed_dir)
    valid = set(folds.loc[folds["fold"] == fold, "id"])
    return manifest.loc[manifest["id"].isin(valid), "phash"] if "phash" in manifest else pd.Series(dtype=str)


def check_init_overlap(experiment: Experiment, fold: int) -> None:
    """Refuse to start a fold from ``init_from``'s fold of the same number where that one trained on any of this
    fold's validation images (the two experiments split the same images otherwise: another seed or fold count), so
    CV is never read off a model that saw its validation images."""
    from ..config import load_config

    source = Path(experiment.config.init_from)
    saved = ExperimentFiles(source).config
    if not saved.is_file() or not experiment.folds_csv.is_file():
        return
    theirs = Experiment(load_config(saved).replace(name=source.name), experiment.paths)
    if not theirs.folds_csv.is_file():
        return
    their_folds = pd.read_csv(theirs.folds_csv, dtype={"id": str})
    mine = pd.read_csv(experiment.folds_csv, dtype={"id": str})
    validating = set(mine.loc[mine["fold"] == fold, "id"])
    seen = validating & set(their_folds.loc[their_folds["fold"] != fold, "id"])
    if seen:
        raise UserError(f"init_from: fold {fold} of {source} trained on {len(seen)} of this fold's {len(validating)} "
                        f"validation images (it split them into {theirs.folds_csv.name}, this experiment into "
                        f"{experiment.folds_csv.name}): use its n_folds={theirs.config.n_folds} and "
                        f"seed={theirs.config.seed}, or start from an experiment trained on other images")
