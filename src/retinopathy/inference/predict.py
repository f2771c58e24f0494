"""Every fold's exported learner on the test set, averaged, graded by the experiment's rule and written as the
submission."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..competitions import read_test_ids
from ..data.folds import TEST_OUTPUTS
from ..data.manifest import read_manifest_file
from ..errors import UserError
from ..experiment import Experiment
from ..files import write_csv
from ..progress import progress_bar
from .grader import Grader
from .submission import TestPredictions, write_submission
from .tuning import read_rule


def predict_test_outputs(experiment: Experiment, verbose: bool = True,
                         any_export: bool = False) -> TestPredictions | None:
    """Every fold on the test set through the Grader, averaged (and with ``tta`` over the flipped views). None
    (and said) where the competition folder has no test set, e.g. a labelled subset."""
    competition = experiment.competition
    sample_ids = read_test_ids(experiment.raw_dir, competition)
    if sample_ids is None:
        if verbose:
            print(f"no {competition.sample_submission} in {experiment.raw_dir}: no test set, no submission written")
        return None
    manifest = read_manifest_file(experiment.processed_dir)
    unprepared = sorted(set(sample_ids) - set(manifest.loc[manifest["split"] == "test", "id"]))
    if unprepared:  # "could not be read" must mean an unreadable file, never one that was not prepared yet
        raise UserError(f"{len(unprepared)} test image(s) of {competition.sample_submission} were never prepared "
                        f"(e.g. '{unprepared[0]}', added after preprocessing?): run retinopathy preprocess with "
                        "this config again, then predict")
    test = manifest[(manifest["split"] == "test") & (manifest["path"] != "")]
    test = test.set_index("id").reindex([i for i in sample_ids if i in set(test["id"])]).reset_index()
    grader = Grader.of_experiment(experiment, any_export=any_export, tta=experiment.config.tta)
    with progress_bar(total=len(test), desc=f"predict {len(test)} test images with {len(grader.runners)} folds",
                      unit="img", show=verbose) as bar:
        outputs = grader.outputs_of_files(test["path"].tolist(), progress=lambda done, _: bar.update(done - bar.n))
    return TestPredictions(list(sample_ids), test["id"].tolist(), outputs, len(grader.runners))


def write_test_outputs(experiment: Experiment, predictions: TestPredictions) -> Path:
    """Every test image's fold-averaged output beside the folds (``test_outputs.csv``): what ``pseudo_labels``
    trains another experiment on."""
    columns = experiment.head.frame_columns(predictions.outputs)
    return write_csv(pd.DataFrame({"id": predictions.ids, **columns}), experiment.dir / TEST_OUTPUTS)


def predict_test(experiment: Experiment, verbose: bool = True, any_export: bool = False) -> Path | None:
    """Average every fold's predictions on the test set, grade them by the experiment's rule (``tuning.json``) and
    write the validated submission CSV."""
    predictions = predict_test_outputs(experiment, verbose, any_export)
    if predictions is None:
        return None
    write_test_outputs(experiment, predictions)
    grades = read_rule(experiment).grades(predictions.outputs, predictions.ids)
    return write_submission(experiment, predictions, grades, experiment.submission, verbose)
