"""Train one fold with fastai: ``train_fold(experiment, fold)``, looped over folds, never copied per fold.

Outputs in ``models/<exp>/fold<K>/``: ``export.pkl`` (the learner, loadable with ``load_learner(cpu=True)``),
``weights.pth`` (its tensors alone, what ``init_from`` reads), ``oof.csv`` (out-of-fold predictions),
``history.csv``, ``loss.png`` and the resolved ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.folds import check_init_overlap, extra_data_rows, pseudo_label_rows, training_table
from ..data.synthetic import SOLUTION
from ..device import cuda_available
from ..errors import UserError
from ..experiment import Experiment, write_provenance
from ..files import atomic_path, remove_stale_temporaries, write_csv, write_faults_named, write_text
from ..metrics import quadratic_kappa
from ..paths import FoldFiles
from ..plots import plot_history, plot_lr_find
from ..preprocessing.image_io import run_on_files
from .callbacks import (
    EpochOffset,
    EpochSeed,
    KeepBest,
    PlainTable,
    ResumeCheckpoint,
    gloo_safe_broadcast,
    tracker_callbacks,
)
from .dataloaders import build_dataloaders
from .history import tidy_history
from .models import build_learner, check_training_stack, remove_speed_callbacks
from .serving_model import TorchRunner, serving_model


@dataclass
class FoldResult:
    """What training one fold produced: its QWK, best epoch, time, folder and learning rate."""
    fold: int
    qwk: float
    best_epoch: int
    seconds: float
    dir: Path
    #: the peak learning rate of the last phase (the config's, or lr_find's pick)
    lr: float = 0.0


def fold_is_done(experiment: Experiment, fold: int) -> bool:
    """A fold is up to date when its export and OOF exist and its export was trained with this config's model
    settings (runtime settings such as ``tta`` or ``num_workers`` never call for a retrain)."""
    return experiment.fold_is_current(fold) and experiment.fold_files(fold).oof.is_file()


def fit_one_cycle_from(learn, n_epoch: int, lr_max, start_epoch: int = 0, cbs=()) -> None:
    """``fit_one_cycle`` that can start part-way: epochs ``start_epoch..n_epoch-1`` follow the very same schedule
    as an uninterrupted run. (fastai's own ``start_epoch`` still fires every skipped epoch's ``after_epoch``, which
    trips ``SaveModelCallback``; here the schedule is simply shifted.)"""
    from fastai.callback.schedule import ParamScheduler, combined_cos

    if start_epoch == 0:
        learn.fit_one_cycle(n_epoch, lr_max, cbs=list(cbs))
        return
    if learn.opt is None:
        learn.create_opt()
    learn.opt.set_hyper("lr", lr_max)
    lr_max = np.array([h["lr"] for h in learn.opt.hypers])
    full = {"lr": combined_cos(0.25, lr_max / 25.0, lr_max, lr_max / 1e5), "mom": combined_cos(0.25, *learn.moms)}
    done = start_epoch / n_epoch
    shifted = {k: (lambda pos, f=f: f(done + pos * (1 - done))) for k, f in full.items()}
    learn.fit(n_epoch - start_epoch, cbs=[ParamScheduler(shifted), *cbs])


def phases_of(config) -> list[tuple[str, int, object]]:
    """(name, epochs, learning rate) of each fit: the head alone first when the body is pretrained, then all."""
    lr = slice(config.lr_min, config.lr) if config.lr_min > 0 else config.lr
    phases = []
    if config.starts_trained and config.freeze_epochs > 0:
        phases.append(("frozen", config.freeze_epochs, config.lr))
    phases.append(("unfrozen", config.epochs, lr))
    return phases


def _picked(phases: list, suggested: float, config) -> list:
    """The phases at lr_find's suggestion: the frozen head at it, the body's rates keeping the config's ratio."""
    ratio = config.lr / config.lr_min if config.lr_min > 0 else None
    picked = slice(suggested / ratio, suggested) if ratio else suggested
    return [(name, n, suggested if name == "frozen" else picked) for name, n, _ in phases]


def _resume_state(out: Path, config, run: str) -> dict | None:
    """Where an interrupted run of this very config on these very folds (``run``) stopped, if it left a
    checkpoint."""
    files = FoldFiles(out)
    state_file = files.resume_state
    if not state_file.is_file() or not files.last_checkpoint.is_file():
        return None
    if config.lr_find == "pick" and not files.lr_find[2].is_file():
        return None  # the rate the interrupted part trained at is unknown: start again
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("fingerprint") == run else None


def load_checkpoint(learn, path: Path) -> None:
    """The interrupted run's model and optimizer (``checkpoints/last.pth``), or one line saying how to start the
    fold afresh where the file is broken (a disk filled or a copy cut short)."""
    try:
        learn.load(path.stem, with_opt=True)
    except Exception as e:  # noqa: BLE001 - any failure to read it means the checkpoint cannot be carried on from
        raise UserError(f"{path}: the interrupted run's checkpoint cannot be read ({type(e).__name__}): delete "
                        f"{FoldFiles(path.parent.parent).resume_state} to train this fold from the start, or run "
                        "train with --restart") from None


def run_lr_find(learn, out: Path, config) -> float:
    """fastai's learning-rate finder: its plot (with the suggestion marked) saved as ``lr_find.png``, the curve as
    ``lr_find.csv``; returns the suggested rate (the valley)."""
    from fastai.callback.schedule import valley

    suggestion = learn.lr_find(suggest_funcs=(valley,), show_plot=False)
    recorder = learn.recorder
    curve = pd.DataFrame({"lr": [float(x) for x in recorder.lrs], "loss": [float(x) for x in recorder.losses]})
    plot, curve_file, choice = FoldFiles(out).lr_find
    write_csv(curve, curve_file)
    write_text(choice, json.dumps({"suggestion": float(suggestion.valley),
                                                 "used": config.lr_find == "pick"}))
    used = " (suggestion used)" if config.lr_find == "pick" else f" (config lr {config.lr:.1e} used)"
    plot_lr_find(curve, float(suggestion.valley), plot, f"{config.name}: lr_find{used}")
    return float(suggestion.valley)


@contextlib.contextmanager
def _bars_only_on_a_terminal() -> Iterator[None]:
    """fastprogress redraws its bars with carriage returns; in a log file or CI that is noise, so keep only the
    epoch table there. Restored afterwards."""
    import fastprogress.fastprogress as fp

    before = fp.NO_BAR
    fp.NO_BAR = not sys.stdout.isatty()
    try:
        yield
    finally:
        fp.NO_BAR = before


@contextlib.contextmanager
def _single_process_view() -> Iterator[None]:
    """fastai gathers predictions across processes whenever ``WORLD_SIZE`` > 1; process 0 writes the outputs alone
    after training, so it must see one process for that while. Restored afterwards."""
    before = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = before


def _distributed() -> bool:
    from fastai.torch_core import num_distrib
    return num_distrib() > 1


def train_fold(experiment: Experiment, fold: int, verbose: bool = True, resume: bool = False,
               callbacks=()) -> FoldResult | None:
    """Train on every fold but ``fold``, validate on it, keep the best epoch by QWK, and write the fold's files.

    ``resume``: carry on from the last finished epoch of an interrupted run of the same config. Under a launcher
    (``torchrun`` / ``accelerate launch``) every process trains on its share of each batch and process 0 writes
    the outputs; the others return None.
    """
    # One run per fold at a time (under a launcher, its first process holds the lock for all of them): a second
    # would interleave its epochs with the first's in the same files.
    check_training_stack()  # a known-bad fastai / fastcore pair is refused before anything is written
    first_process = os.environ.get("RANK", "0") == "0"
    lock = experiment.fold_lock(fold) if first_process else contextlib.nullcontext()
    with lock, _bars_only_on_a_terminal():
        return _train_fold(experiment, fold, verbose, resume, callbacks)


def _train_fold(experiment: Experiment, fold: int, verbose: bool, resume: bool, callbacks) -> FoldResult | None:
    """:func:`train_fold`'s work, under the fold's lock: the rows, the learner, the phases (resumed where an
    interrupted run of the same config on the same rows left off), then the fold's outputs."""
    from fastai.torch_core import rank_distrib, set_seed

    config = experiment.config
    check_training_stack()
    main_process = rank_distrib() == 0

    def say(line: str) -> None:
        if verbose and main_process:
            print(f"fold {fold}: {line}")

    start = time.time()
    set_seed(config.seed + fold, reproducible=True)
    folds_digest = experiment.folds_digest()  # the rows this training reads, recorded beside the export
    dls = build_dataloaders(_fold_rows(experiment, fold, say), experiment, fold)
    learn = _start_learner(dls, experiment, fold, say)
    files = experiment.fold_files(fold)
    # Only now is the config known good: a typo in it leaves the previous run's files as they were.
    if main_process:
        files.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(files.dir)
        config.save(experiment.files.config)
    run = f"{config.fingerprint}:{folds_digest}"  # a resumed run trains the same model on the same rows
    state = _resume_state(files.dir, config, run) if resume else None
    if state is None:
        files.history.unlink(missing_ok=True)
        files.resume_state.unlink(missing_ok=True)
    else:
        say(f"resuming after epoch {state['epoch'] + 1} of phase {state['phase'] + 1}")
    phases = _planned_phases(learn, experiment, fold, state, main_process)
    distributed = _distributed()
    _fit_phases(learn, experiment, fold, phases, state, run, main_process, callbacks)
    if distributed:
        torch.distributed.barrier()  # every process has finished fitting
        if not main_process:
            return None
    peak = phases[-1][2]
    with _single_process_view() if distributed else contextlib.nullcontext():
        return _finish_fold(learn, dls, experiment, fold, start, verbose,
                            peak.stop if isinstance(peak, slice) else peak, folds_digest)


def _fold_rows(experiment: Experiment, fold: int, say) -> pd.DataFrame:
    """Every row the fold trains or validates on: the folds, plus pseudo-labelled test images and the extra sets'
    images (training only), each said in a line."""
    config = experiment.config
    table = training_table(experiment)
    if config.pseudo_labels:
        pseudo = pseudo_label_rows(experiment)
        say(f"{len(pseudo)} pseudo-labelled test images added to training (never validation)")
        table = pd.concat([table, pseudo], ignore_index=True)
    if config.extra_data:
        extra = extra_data_rows(experiment, fold)
        given = extra["source"].value_counts()
        counts = ", ".join(f"{given.get(source, 0)} from {source}" + (
            f" ({n} copies of this fold's validation photographs left out)" if n else "")
            for source, n in extra.attrs["copies"].items())
        say(f"extra_data: {len(extra)} images added to training (never validation): {counts}")
        table = pd.concat([table, extra.drop(columns=["source"])], ignore_index=True)
    return table


def _start_learner(dls, experiment: Experiment, fold: int, say):
    """The fold's learner, its body from the hub, a weights file or another experiment's fold (said)."""
    from fastai.callback.progress import ProgressCallback

    config = experiment.config
    learn = build_learner(dls, experiment, experiment.fold_dir(fold))
    if not sys.stdout.isatty():  # a log file: the epoch table as plain lines, no bar fragments
        learn.remove_cb(ProgressCallback)
        learn.add_cb(PlainTable())
    if config.init_from:
        from .weights import init_from_experiment

        check_init_overlap(experiment, fold)
        say(init_from_experiment(learn.model, Path(config.init_from), fold))
    if getattr(learn, "weights_loaded", None):
        say(f"{config.pretrained_weights}: {learn.weights_loaded}")
    return learn


def _planned_phases(learn, experiment: Experiment, fold: int, state: dict | None, main_process: bool) -> list:
    """The fits to run, at lr_find's suggestion where the config picks it (a resumed run at the rate its first part
    picked: lr_find is not run twice, its trial steps would start from the checkpoint and pick another rate)."""
    config, files = experiment.config, experiment.fold_files(fold)
    phases = phases_of(config)
    if config.lr_find != "off" and state is None and main_process:
        suggested = run_lr_find(learn, files.dir, config)
        print(f"fold {fold}: lr_find suggests {suggested:.2e} → {files.lr_find[0]}")
        if config.lr_find == "pick":
            phases = _picked(phases, suggested, config)
    elif config.lr_find == "pick" and state is not None:
        phases = _picked(phases, json.loads(files.lr_find[2].read_text())["suggestion"], config)
    return phases


def _fit_phases(learn, experiment: Experiment, fold: int, phases: list, state: dict | None, run: str,
                main_process: bool, callbacks) -> None:
    """Fit each phase, from where ``state`` says an interrupted run stopped, checkpointing every epoch."""
    from fastai.callback.progress import CSVLogger

    config, files = experiment.config, experiment.fold_files(fold)
    trackers = tracker_callbacks(config, files.dir, fold) if main_process else []
    for index, (name, n_epoch, lr) in enumerate(phases):
        if name == "unfrozen" and len(phases) > 1:
            learn.unfreeze()
        start_epoch = 0
        tracker = KeepBest(monitor="qwk", comp=np.greater, fname=FoldFiles.BEST, reset_on_fit=True)
        if state is not None:
            if index < state["phase"]:
                continue
            if index == state["phase"]:
                load_checkpoint(learn, files.last_checkpoint)
                start_epoch = state["epoch"] + 1
                tracker.best, tracker.reset_on_fit = state["best"], False
                if start_epoch >= n_epoch:
                    # The phase had finished: an uninterrupted run went on from its best epoch's weights (the
                    # tracker reloads them after the fit), keeping the optimizer's state. Do the same.
                    learn.load(FoldFiles.BEST, with_opt=False)
                    continue
        tracker.offset = start_epoch
        cbs = [tracker, ResumeCheckpoint(files.resume_state, index, start_epoch, tracker, run),
               EpochSeed(config.seed + fold, index, start_epoch),
               EpochOffset(start_epoch, state.get("smooth_loss") if start_epoch else None), *callbacks]
        if main_process:
            cbs.insert(0, CSVLogger(fname=FoldFiles.HISTORY, append=True))
            cbs += trackers
        with write_faults_named(files.checkpoints):  # the checkpoints are written by torch.save during the fit
            _fit(learn, n_epoch, lr, start_epoch, cbs)


def _fit(learn, n_epoch: int, lr, start_epoch: int, cbs: list) -> None:
    """One phase's one-cycle fit, in fastai's distributed context under a launcher (the best epoch is reloaded at
    the end)."""
    if not _distributed():
        fit_one_cycle_from(learn, n_epoch, lr, start_epoch, cbs)
        return
    import fastai.distributed  # noqa: F401 - gives Learner its distrib_ctx

    # SyncBatchNorm exists only on CUDA; CPU processes (gloo) keep per-process batch statistics.
    cpu = not cuda_available()
    with learn.distrib_ctx(sync_bn=not cpu, cpu=cpu), (gloo_safe_broadcast() if cpu else contextlib.nullcontext()):
        fit_one_cycle_from(learn, n_epoch, lr, start_epoch, cbs)


def _finish_fold(learn, dls, experiment: Experiment, fold: int, start: float, verbose: bool,
                 lr: float, folds_digest: str) -> FoldResult:
    """History, loss curve, the export and the out-of-fold predictions: the fold's outputs, written by one process."""
    config = experiment.config
    files = experiment.fold_files(fold)
    history = tidy_history(files.history, [(name, n) for name, n, _ in phases_of(config)])
    write_csv(history, files.history)
    plot_history(history, files.loss_plot, f"{config.name} · fold {fold}")

    learn = remove_speed_callbacks(learn)  # float32, contiguous: what predicts the same on any CPU
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, PlainTable)])
    learn.dls.train.num_workers = learn.dls.valid.num_workers = 0
    # Never an export beside the fingerprint or the OOF of another: the old ones go before the new export lands,
    # and the fingerprint is written last, once the OOF is (a kill in between leaves a fold of unknown origin,
    # which is trained again, never one that says "up to date" over the old model's outputs).
    files.fingerprint.unlink(missing_ok=True)
    files.oof.unlink(missing_ok=True)
    with atomic_path(files.export) as tmp:
        learn.export(tmp)
    with atomic_path(files.weights) as tmp:  # what init_from reads: tensors only, no pickled code
        torch.save(learn.model.state_dict(), tmp)
    config.save(files.config)

    # OOF predictions from exactly what is exported, run as the Grader runs it (no test-time views: what the
    # fold's own validation measured)
    head = experiment.head
    runner = TorchRunner(serving_model(learn, head.name), device="cuda" if cuda_available() else "cpu",
                         image_size=config.image_size)
    valid = dls.valid.items
    outputs = run_on_files(runner, valid["path"].tolist(), len(head.columns), batch=64)
    oof = pd.DataFrame({"id": valid["id"].to_numpy(), "fold": fold, "grade": valid["grade"].to_numpy(),
                        **head.frame_columns(outputs), "pred": head.plain_grades(outputs)})
    write_csv(oof, files.oof)
    write_provenance(files.dir, config, folds_digest, synthetic=(experiment.raw_dir / SOLUTION).is_file())
    qwk = quadratic_kappa(oof["pred"], oof["grade"])
    best_epoch = int(history["qwk"].to_numpy().argmax())
    # The export is the fold's product; the checkpoints (model and optimizer, several times the model's size) are
    # only needed to resume.
    shutil.rmtree(files.checkpoints, ignore_errors=True)
    files.resume_state.unlink(missing_ok=True)
    if verbose:
        print(f"fold {fold}: QWK {qwk:.4f} of the exported model (best epoch {best_epoch + 1}/{len(history)}) on its "
              f"validation images, graded in float32 as predict grades them (the epoch table's qwk is the training "
              f"loop's own figure) in {time.time() - start:.0f}s → {files.dir}")
    return FoldResult(fold, qwk, best_epoch, time.time() - start, files.dir, float(lr))


def train_folds(experiment: Experiment, folds: list[int], restart: bool = False) -> list[FoldResult]:
    """Train ``folds`` one after another as the pipeline does: a fold that is up to date is skipped, an interrupted
    one carries on from its last finished epoch; ``restart`` trains every one of them from the start."""
    results = []
    for fold in folds:
        if not restart and fold_is_done(experiment, fold):
            print(f"fold {fold}: up to date in {experiment.fold_dir(fold)}, skipped (--restart trains it again)")
            continue
        results.append(train_fold(experiment, fold, resume=not restart))
    return results
