"""The submission CSV: exactly the sample submission's ids, in its order, one integer grade 0-4 each; validated
before it is written (atomically) and again before it is sent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..competitions import Competition, read_labels
from ..errors import UserError
from ..experiment import Experiment
from ..files import write_csv, write_text
from ..metrics import GRADES


@dataclass
class TestPredictions:
    """Fold-averaged model outputs on the competition's test set, in sample-submission order where images were
    readable."""

    sample_ids: list[str]
    ids: list[str]
    outputs: np.ndarray  # n × 5 probabilities or n × 1 regression values
    n_models: int


def validate_submission(submission: pd.DataFrame, sample_ids: list[str], competition: Competition,
                        source: str = "submission") -> None:
    """Refuse a submission Kaggle would reject or mis-score: ids, order, columns and grades must be exact."""
    expected = [competition.id_column, competition.label_column]
    if list(submission.columns) != expected:
        raise UserError(f"{source}: columns are {','.join(map(str, submission.columns))}; "
                        f"expected {','.join(expected)}")
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
    # Kaggle reads the grade as an integer: "2.0", " 2" or "two" are refused here rather than mis-scored there.
    cells = submission[competition.label_column].astype(str)
    bad = ~cells.str.fullmatch("|".join(str(g) for g in GRADES))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{source}, row {row + 2}: grade '{submission[competition.label_column].iloc[row]}' is not "
                        "an integer 0-4")


def write_submission(experiment: Experiment, predictions: TestPredictions, grades: np.ndarray, path: Path,
                     verbose: bool = True, fingerprints: list[str] | None = None) -> Path:
    """The submission CSV in the sample submission's ids and order, validated, written atomically, with a sidecar
    ``<name>.json`` naming the fingerprints of the models that made it."""
    competition = experiment.competition
    sample_ids = predictions.sample_ids
    predicted = dict(zip(predictions.ids, grades, strict=False))
    unreadable = [i for i in sample_ids if i not in predicted]
    if unreadable:
        # Kaggle needs a row for every id: give the most common training grade and say so.
        fallback = int(read_labels(experiment.raw_dir, competition)["grade"].mode()[0])
        print(f"warning: {len(unreadable)} test image(s) could not be read (e.g. '{unreadable[0]}', see "
              f"{experiment.manifest_csv}); predicted the most common grade, {fallback}, for them")
        predicted.update({i: fallback for i in unreadable})
    submission = pd.DataFrame({competition.id_column: sample_ids,
                               competition.label_column: [int(predicted[i]) for i in sample_ids]})
    validate_submission(submission, sample_ids, competition, str(path))
    write_csv(submission, path)
    write_text(path.with_suffix(".json"), json.dumps(
        {"experiment": experiment.config.name, "competition": competition.slug,
         "fingerprints": fingerprints or [experiment.config.fingerprint], "models": predictions.n_models,
         "rows": len(submission), "config": str(experiment.files.config)}, indent=1))
    if verbose:
        counts = submission[competition.label_column].value_counts().reindex(GRADES, fill_value=0)
        print(f"submission: {len(submission)} rows from {predictions.n_models} model(s) → {path}")
        print("  predicted grades: " + ", ".join(f"{g}: {c}" for g, c in counts.items()))
    return path
