"""Every fold's exported learner on the test set, averaged, graded by the experiment's rule and written as the
submission."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.competitions import read_test_ids
from ..data.folds import TEST_OUTPUTS
from ..io import write_csv
from ..errors import UserError
from ..experiment import Experiment, load_learner_quietly
from ..training.callbacks import FlipInput
from ..training.models import cpu_prefers_channels_last
from .submission import TestPredictions, write_submission
from .tuning import read_rule


def predict_items(learn, items: pd.DataFrame, tta: bool = False, channels_last: bool = False) -> np.ndarray:
    """One learner's outputs on rows with a ``path`` column: probabilities (n × 5) or values (n × 1);
    ``channels_last`` runs the network in that memory layout (the same outputs, faster on a CPU from 128 px)."""
    if channels_last:
        learn.model = learn.model.to(memory_format=torch.channels_last)
    dl = learn.dls.test_dl(items, bs=64, num_workers=0)
    views = [None, (-1,), (-2,)] if tta else [None]
    outputs = []
    for dims in views:
        cbs = [FlipInput(dims)] if dims else None
        with learn.no_bar():  # fastai's bar garbles logs; the caller shows progress by fold
            preds, _ = learn.get_preds(dl=dl, cbs=cbs)
        outputs.append(preds.float().numpy())
    out = np.mean(outputs, axis=0)
    return out.reshape(len(items), -1)


def load_fold_learners(experiment: Experiment) -> dict:
    """Every trained fold's exported learner, by fold number (on the CPU unless a GPU is there)."""
    folds = experiment.require_trained_folds()
    cpu = not torch.cuda.is_available()
    return {k: load_learner_quietly(experiment.fold_dir(k) / "export.pkl", cpu=cpu) for k in folds}


def predict_test_outputs(experiment: Experiment, verbose: bool = True) -> TestPredictions | None:
    """Every fold's learner on the test set, averaged (probabilities for classification, values for regression).
    None (and said) where the competition folder has no test set, e.g. a labelled subset."""
    competition = experiment.competition
    sample_ids = read_test_ids(experiment.raw_dir, competition)
    if sample_ids is None:
        if verbose:
            print(f"no {competition.sample_submission} in {experiment.raw_dir}: no test set, no submission written")
        return None
    if not experiment.manifest_csv.is_file():
        raise UserError(f"{experiment.manifest_csv} not found: run scripts/preprocess.py with this config first")
    manifest = pd.read_csv(experiment.manifest_csv, dtype={"id": str}, keep_default_na=False)
    test = manifest[(manifest["split"] == "test") & (manifest["path"] != "")]
    test = test.set_index("id").reindex([i for i in sample_ids if i in set(test["id"])]).reset_index()
    learners = load_fold_learners(experiment)
    folds = tqdm(learners.values(), desc=f"predict {len(test)} test images", unit="fold", disable=not verbose)
    channels_last = cpu_prefers_channels_last(experiment.config.image_size)
    outputs = [predict_items(learn, test[["id", "path"]], experiment.config.tta, channels_last) for learn in folds]
    return TestPredictions(list(sample_ids), test["id"].tolist(), np.mean(outputs, axis=0), len(learners))


def write_test_outputs(experiment: Experiment, predictions: TestPredictions) -> Path:
    """Every test image's fold-averaged output beside the folds (``test_outputs.csv``): what ``pseudo_labels``
    trains another experiment on."""
    outputs = predictions.outputs
    columns = {"value": outputs[:, 0]} if outputs.shape[1] == 1 else {f"prob_{g}": outputs[:, g]
                                                                       for g in range(outputs.shape[1])}
    return write_csv(pd.DataFrame({"id": predictions.ids, **columns}), experiment.dir / TEST_OUTPUTS)


def predict_test(experiment: Experiment, verbose: bool = True) -> Path | None:
    """Average every fold's predictions on the test set, grade them by the experiment's rule (``tuning.json``) and
    write the validated submission CSV."""
    predictions = predict_test_outputs(experiment, verbose)
    if predictions is None:
        return None
    write_test_outputs(experiment, predictions)
    grades = read_rule(experiment).grades(predictions.outputs, predictions.ids)
    return write_submission(experiment, predictions, grades, experiment.submission, verbose)
