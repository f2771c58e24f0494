"""Grading a whole competition folder from a bundle of trained folds, with no network and no pipeline state: what
the Kaggle kernel of a code competition runs (``retinopathy kernel`` builds it), on whatever test ids it finds.

A bundle is an experiment's folder as training left it, copied: ``models/<exp>/fold<K>/`` (``export.pkl`` or the
ONNX files, ``config.yaml``, ``fingerprint.json``) and ``models/<exp>/tuning.json``; a bundle built for pseudo-labels
also holds each fold's ``weights.pth`` and the folds it was trained on (``models/<exp>/folds.csv``), from which the
kernel's second stage fine-tunes every fold on the training images and the test images the first stage graded."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..competitions import detect_competition, read_labels, read_test_ids
from ..errors import UserError
from ..experiment import Experiment
from ..files import atomic_path, write_csv
from ..metrics import GradeRule
from ..paths import ExperimentFiles, Paths
from ..preprocessing.image_io import examine_file
from ..preprocessing.stage import preprocess_dataset, ungradable_line
from .engines import get_engine
from .grader import Grader, models_in_folder
from .predict import predict_test, write_test_outputs
from .submission import TestPredictions, write_submission
from .tuning import tune_experiment

#: in a bundle built for pseudo-labels, beside the folds: the rows each fold trained and validated on
BUNDLED_FOLDS = ExperimentFiles.BUNDLED_FOLDS
#: the second stage starts from trained weights: its one-cycle peaks at this share of the config's rates
PSEUDO_LR_SCALE = 0.25


def bundle_models(models_dir: Path, engine: str) -> list[Path]:
    """The model files, for ``engine``, of the one experiment under a bundle's ``models`` folder
    (``<exp>/fold<K>/<file>``, at any depth: an unpacked archive may add a level)."""
    name = get_engine(engine).model_file
    experiments = sorted({p.parent.parent for p in Path(models_dir).rglob(f"{ExperimentFiles.FOLDS}/{name}")})
    if len(experiments) != 1:
        raise UserError(f"{models_dir}: expected the trained folds of one experiment with {name} "
                        f"files (the {engine} engine), found {len(experiments)} experiments")
    return models_in_folder(experiments[0], engine)


@dataclass
class OfflineGrading:
    """What grading a competition folder offline produced."""

    submission: Path
    #: the working experiment of the bundle's config on this folder: its ``test_outputs.csv`` is in its ``dir``
    experiment: Experiment
    #: seconds taken to prepare and grade the test images
    seconds: float


def predict_offline(models_dir: Path, competition_dir: Path, output_dir: Path, engine: str = "torch",
                    workers: int | None = None, device: str = "cpu", verbose: bool = True) -> Path:
    """Prepare every test image of ``competition_dir`` exactly as training did, grade it with every fold of the
    bundle's ``models_dir`` (TTA as configured), apply the tuning and write ``output_dir/submission.csv``, validated
    against the folder's sample submission. Works on whatever ids the sample submission lists."""
    return grade_offline(models_dir, competition_dir, output_dir, engine, workers, device, verbose).submission


def grade_offline(models_dir: Path, competition_dir: Path, output_dir: Path, engine: str = "torch",
                  workers: int | None = None, device: str = "cpu", verbose: bool = True) -> OfflineGrading:
    """:func:`predict_offline`, also keeping every test image's fold-averaged output (``test_outputs.csv``, what
    pseudo-labels are read from) and saying how long it took."""
    competition_dir, output_dir = Path(competition_dir), Path(output_dir)
    start = time.time()
    grader = Grader(bundle_models(models_dir, engine), engine=engine, device=device)
    config = grader.config.replace(raw_dir=str(competition_dir))
    competition = detect_competition(competition_dir)
    sample_ids = read_test_ids(competition_dir, competition)
    if sample_ids is None:
        raise UserError(f"{competition_dir / competition.sample_submission} not found: the kernel needs the "
                        "competition's test set")
    experiment = Experiment(config, Paths(data=output_dir / "retinopathy-work", output=output_dir / "retinopathy-work"))
    manifest = preprocess_dataset(competition_dir, experiment.processed_dir, config.preprocess, config.image_size,
                                  workers=workers, progress=verbose, splits=("test",),
                                  hashed=False)  # no folds to keep copies together in
    readable = manifest[(manifest["path"] != "")]
    if verbose:
        print(f"prepared {len(readable)} of {len(sample_ids)} test images ({time.time() - start:.0f}s); grading "
              f"with {len(grader.runners)} fold(s), {engine} engine on {device}, TTA {'on' if grader.tta else 'off'}",
              flush=True)
        # Kaggle scores every row, so an ungradable photograph is graded all the same; the log says how many
        print(f"test images: {ungradable_line(manifest)} (each graded all the same: the submission needs every row)",
              flush=True)

    def progress(done, total):
        if verbose and (done == total or done % 1024 < 32):
            print(f"  graded {done}/{total} ({time.time() - start:.0f}s)", flush=True)

    outputs = grader.outputs_of_files(readable["path"].tolist(), progress=progress)
    ids = readable["id"].astype(str).tolist()
    predictions = TestPredictions(list(sample_ids), ids, outputs, len(grader.runners))
    write_test_outputs(experiment, predictions)
    grades = grader.grades(outputs, ids)
    submission = write_submission(experiment, predictions, grades, output_dir / "submission.csv", verbose,
                                  fingerprints=sorted({c.fingerprint for c in grader.configs}))
    return OfflineGrading(submission, experiment, time.time() - start)


class OutOfTime(Exception):
    """The second stage's training would run past the kernel's time budget."""


def pseudo_label_offline(models_dir: Path, competition_dir: Path, output_dir: Path, epochs: int = 2,
                         minutes: float = 360.0, device: str = "cpu", workers: int | None = None,
                         verbose: bool = True) -> Path:
    """The kernel's two stages: grade the test set with the bundled folds (``submission.csv`` is written at once,
    the fallback), then fine-tune every fold from its own weights for ``epochs`` on its training part plus the
    test images as graded (``pseudo_labels``: soft scores for heads that learn numbers, confident grades for
    classifiers; never in a validation part), tune the thresholds on the new out-of-fold outputs and grade the
    test set again. The second stage's submission replaces the first's only where every fold was fine-tuned
    within ``minutes`` of the kernel's start (a fold that would overrun is not started, one that does is stopped)
    and its out-of-fold QWK is no lower than the bundled folds'."""
    start = time.time()
    first = grade_offline(models_dir, competition_dir, output_dir, "torch", workers, device, verbose)
    bundled = bundle_models(models_dir, "torch")[0].parent.parent
    # predicting again takes about what the first stage took: training must leave that much of the budget
    train_until = start + minutes * 60 - 1.25 * first.seconds
    experiment = second_stage(first.experiment, bundled, epochs)
    say = print if verbose else (lambda *a, **k: None)
    say(f"pseudo-labels: fine-tuning {experiment.config.n_folds} folds for {epochs} epoch(s) each on their training "
        f"part and the graded test images, within {minutes:.0f} min of the kernel's start", flush=True)
    missing = missing_training_images(experiment, bundled / BUNDLED_FOLDS)
    if missing:
        say(f"pseudo-labels: second stage skipped: {missing}; the first stage's submission stays", flush=True)
        return first.submission
    try:
        seconds = train_within(experiment, train_until, workers, verbose)
    except OutOfTime as e:
        say(f"pseudo-labels: second stage stopped: {e}; the first stage's submission stays", flush=True)
        return first.submission
    rule = tune_experiment(experiment, verbose)
    before = GradeRule.read(bundled, experiment.config.head).extra.get("oof_qwk_tuned")
    after = rule.extra["oof_qwk_tuned"]
    bundled = before if before is not None else float("nan")
    say(f"pseudo-labels: {experiment.config.n_folds} folds fine-tuned in {sum(seconds) / 60:.1f} min; out-of-fold "
        f"QWK {bundled:.4f} (bundled folds) → {after:.4f} (fine-tuned)", flush=True)
    second = predict_test(experiment, verbose)  # written either way: the kernel's output keeps both
    if before is not None and after < before:
        say(f"pseudo-labels: the fine-tuned folds score lower out of fold ({second} kept): the first stage's "
            "submission stays", flush=True)
        return first.submission
    with atomic_path(first.submission) as tmp:
        shutil.copyfile(second, tmp)
    say(f"pseudo-labels: submission from the fine-tuned folds → {first.submission}", flush=True)
    return first.submission


def second_stage(first: Experiment, bundled: Path, epochs: int) -> Experiment:
    """The fine-tuning experiment beside the first stage's: the bundled config, each fold started from the bundled
    fold's weights (``init_from``), the first stage's test outputs as ``pseudo_labels``, no frozen epochs, a quarter
    of the rates, on the bundled folds (written where this experiment reads its folds)."""
    config = first.config
    tuned = config.replace(name=f"{config.name}-pseudo", init_from=str(bundled), pseudo_labels=str(first.dir),
                           epochs=epochs, freeze_epochs=0, lr=config.lr * PSEUDO_LR_SCALE,
                           lr_min=config.lr_min * PSEUDO_LR_SCALE, lr_find="off", extra_data="", folds_at_once=1)
    experiment = Experiment(tuned, first.paths)
    write_csv(pd.read_csv(bundled / BUNDLED_FOLDS, dtype={"id": str}), experiment.folds_csv)
    return experiment


def missing_training_images(experiment: Experiment, folds_csv: Path) -> str | None:
    """Why the competition folder cannot train the bundled folds again (None when it can): every labelled id of the
    folds must be among its training labels."""
    try:
        labels = set(read_labels(experiment.raw_dir, experiment.competition)["id"].astype(str))
    except UserError as e:
        return str(e)
    ids = pd.read_csv(folds_csv, dtype={"id": str})["id"]
    absent = ids[~ids.isin(labels)]
    if len(absent):
        return (f"{len(absent)} of the {len(ids)} training images the folds were trained on are not in "
                f"{experiment.raw_dir} (e.g. '{absent.iloc[0]}')")
    return None


def train_within(experiment: Experiment, until: float, workers: int | None = None,
                 verbose: bool = True) -> list[float]:
    """Prepare the training and test images, then train every fold; a fold whose projected time (the mean of those
    before it) would end past ``until`` is not started, and an epoch that ends past it stops the fold (both raise
    :class:`OutOfTime`). The seconds each fold took."""
    from fastai.callback.core import Callback

    from ..training.train import train_fold

    class Deadline(Callback):
        order = 100  # after the trackers have written the epoch

        def after_epoch(self):
            if time.time() > until:
                raise OutOfTime(f"fold {fold} passed the time budget after epoch {self.epoch + 1}")

    config = experiment.config
    # no hashes: they only find copies to keep in one fold, and the folds are the bundled ones
    preprocess_dataset(experiment.raw_dir, experiment.processed_dir, config.preprocess, config.image_size,
                       workers=workers, progress=verbose, splits=("train", "test"), hashed=False)
    seconds: list[float] = []
    for fold in range(experiment.config.n_folds):
        projected = float(np.mean(seconds)) if seconds else 0.0
        if time.time() + projected > until:
            raise OutOfTime(f"fold {fold} would end about {(time.time() + projected - until) / 60:.0f} min past "
                            "the time budget")
        began = time.time()
        train_fold(experiment, fold, verbose, callbacks=[Deadline()])
        seconds.append(time.time() - began)
    return seconds


def seconds_per_image(grader: Grader, images: list[Path]) -> float:
    """Measured wall time per test image of the kernel's work on this machine: decode, prepare, every fold."""
    if not images:
        raise UserError("no image to time the kernel with")
    start = time.perf_counter()
    grader.outputs(np.stack([examine_file(p, grader.method, grader.size).image for p in images]))
    return (time.perf_counter() - start) / len(images)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def describe_speed(per_image: float, n_images: int = 13_000, limit_hours: float = 9.0, gpu: str | None = None) -> str:
    """One line: the time per 1,000 images and for ``n_images``, against the kernel's run-time limit, for the machine
    class the kernel runs on (a CPU kernel, or ``gpu``, a Kaggle GPU machine, where only the CPU's share is
    measured here)."""
    total = per_image * n_images
    verdict = "fits" if total < limit_hours * 3600 else "does NOT fit"
    where = (f"on Kaggle's {gpu} the folds run on its GPU, so expect less; preprocessing stays on its CPU"
             if gpu else "a kernel's CPU differs: keep a margin, or use --gpu")
    return (f"{_duration(per_image * 1000)} per 1,000 images on this machine's CPU → about {_duration(total)} for "
            f"{n_images:,} test images ({verdict} Kaggle's {limit_hours:.0f} h limit; {where})")
