"""Train one fold with fastai: ``train_fold(experiment, fold)``, looped over folds, never copied per fold.

Outputs in ``models/<exp>/fold<K>/``: ``export.pkl`` (the learner, loadable with ``load_learner(cpu=True)``),
``oof.csv`` (out-of-fold predictions), ``history.csv``, ``loss.png`` and the resolved ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from ..data.folds import pseudo_label_rows, training_table
from ..errors import UserError
from ..experiment import FINGERPRINT, Experiment, write_provenance
from ..io import atomic_path, remove_stale_temporaries, write_csv, write_faults_named, write_text
from ..metrics import GRADES, GradeRule, quadratic_kappa
from ..plots import plot_history, plot_lr_find
from .callbacks import EpochOffset, EpochSeed, ResumeCheckpoint, gloo_safe_broadcast, tracker_callbacks
from .dataloaders import build_dataloaders, cores_per_fold
from .models import build_learner, remove_speed_callbacks


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
    return experiment.fold_is_current(fold) and (experiment.fold_dir(fold) / "oof.csv").is_file()


RESUME_STATE = "resume.json"


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


def _phases(config) -> list[tuple[str, int, object]]:
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


def _resume_state(out: Path, config) -> dict | None:
    """Where an interrupted run of this very config stopped, if it left a checkpoint."""
    state_file = out / RESUME_STATE
    if not state_file.is_file() or not (out / "checkpoints" / "last.pth").is_file():
        return None
    if config.lr_find == "pick" and not (out / "lr_find.json").is_file():
        return None  # the rate the interrupted part trained at is unknown: start again
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("fingerprint") == config.fingerprint else None


def run_lr_find(learn, out: Path, config) -> float:
    """fastai's learning-rate finder: its plot (with the suggestion marked) saved as ``lr_find.png``, the curve as
    ``lr_find.csv``; returns the suggested rate (the valley)."""
    from fastai.callback.schedule import valley

    suggestion = learn.lr_find(suggest_funcs=(valley,), show_plot=False)
    recorder = learn.recorder
    curve = pd.DataFrame({"lr": [float(x) for x in recorder.lrs], "loss": [float(x) for x in recorder.losses]})
    write_csv(curve, out / "lr_find.csv")
    write_text(out / "lr_find.json", json.dumps({"suggestion": float(suggestion.valley),
                                                 "used": config.lr_find == "pick"}))
    used = " (suggestion used)" if config.lr_find == "pick" else f" (config lr {config.lr:.1e} used)"
    plot_lr_find(curve, float(suggestion.valley), out / "lr_find.png", f"{config.name}: lr_find{used}")
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
    with _bars_only_on_a_terminal():
        return _train_fold(experiment, fold, verbose, resume, callbacks)


def _train_fold(experiment: Experiment, fold: int, verbose: bool, resume: bool, callbacks) -> FoldResult | None:
    from fastai.callback.progress import CSVLogger
    from fastai.callback.tracker import SaveModelCallback
    from fastai.torch_core import rank_distrib, set_seed

    config = experiment.config
    out = experiment.fold_dir(fold)
    main_process = rank_distrib() == 0
    start = time.time()
    set_seed(config.seed + fold, reproducible=True)
    table = training_table(experiment)
    if config.pseudo_labels:
        pseudo = pseudo_label_rows(experiment)
        if verbose and main_process:
            print(f"fold {fold}: {len(pseudo)} pseudo-labelled test images added to training (never validation)")
        table = pd.concat([table, pseudo], ignore_index=True)
    dls = build_dataloaders(table, experiment, fold)
    learn = build_learner(dls, experiment, out)
    if config.init_from:
        from .weights import init_from_experiment

        copied = init_from_experiment(learn.model, Path(config.init_from), fold)
        if verbose and main_process:
            print(f"fold {fold}: {copied}")
    if verbose and main_process and getattr(learn, "weights_loaded", None):
        print(f"fold {fold}: {config.pretrained_weights}: {learn.weights_loaded}")
    # Only now is the config known good: a typo in it leaves the previous run's files as they were.
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        config.save(experiment.dir / "config.yaml")
    history_file = out / "history.csv"

    state = _resume_state(out, config) if resume else None
    if state is None:
        history_file.unlink(missing_ok=True)
        (out / RESUME_STATE).unlink(missing_ok=True)
    elif verbose and main_process:
        print(f"fold {fold}: resuming after epoch {state['epoch'] + 1} of phase {state['phase'] + 1}")

    phases = _phases(config)
    if config.lr_find != "off" and state is None and main_process:
        suggested = run_lr_find(learn, out, config)
        print(f"fold {fold}: lr_find suggests {suggested:.2e} → {out / 'lr_find.png'}")
        if config.lr_find == "pick":
            phases = _picked(phases, suggested, config)
    elif config.lr_find == "pick" and state is not None:
        # A resumed run goes on at the rate its first part picked, not the config's (lr_find is not run twice: its
        # trial steps would start from the checkpoint, not the fresh model, and pick another rate).
        phases = _picked(phases, json.loads((out / "lr_find.json").read_text())["suggestion"], config)

    distributed = _distributed()
    trackers = tracker_callbacks(config, out, fold) if main_process else []
    for index, (name, n_epoch, lr) in enumerate(phases):
        if name == "unfrozen" and len(phases) > 1:
            learn.unfreeze()
        start_epoch = 0
        tracker = SaveModelCallback(monitor="qwk", comp=np.greater, fname="best", reset_on_fit=True)
        if state is not None:
            if index < state["phase"]:
                continue
            if index == state["phase"]:
                learn.load("last", with_opt=True)
                start_epoch = state["epoch"] + 1
                tracker.best, tracker.reset_on_fit = state["best"], False
                if start_epoch >= n_epoch:
                    # The phase had finished: an uninterrupted run went on from its best epoch's weights (the
                    # tracker reloads them after the fit), keeping the optimizer's state. Do the same.
                    learn.load("best", with_opt=False)
                    continue
        cbs = [tracker, ResumeCheckpoint(out / RESUME_STATE, index, start_epoch, tracker, config.fingerprint),
               EpochSeed(config.seed + fold, index, start_epoch),
               *([EpochOffset(start_epoch, state.get("smooth_loss"))] if start_epoch else []), *callbacks]
        if main_process:
            cbs.insert(0, CSVLogger(fname="history.csv", append=True))
            cbs += trackers
        with write_faults_named(out / "checkpoints"):  # the checkpoints are written by torch.save during the fit
            if distributed:
                import fastai.distributed  # noqa: F401 - gives Learner its distrib_ctx

                # SyncBatchNorm exists only on CUDA; CPU processes (gloo) keep per-process batch statistics.
                cpu = not torch.cuda.is_available()
                with learn.distrib_ctx(sync_bn=not cpu, cpu=cpu), \
                        (gloo_safe_broadcast() if cpu else contextlib.nullcontext()):
                    fit_one_cycle_from(learn, n_epoch, lr, start_epoch, cbs)
            else:
                fit_one_cycle_from(learn, n_epoch, lr, start_epoch, cbs)  # the best epoch is reloaded at the end
    if distributed:
        torch.distributed.barrier()  # every process has finished fitting
        if not main_process:
            return None
    peak = phases[-1][2]
    with _single_process_view() if distributed else contextlib.nullcontext():
        return _finish_fold(learn, dls, experiment, fold, start, verbose,
                            peak.stop if isinstance(peak, slice) else peak)


def _finish_fold(learn, dls, experiment: Experiment, fold: int, start: float, verbose: bool,
                 lr: float) -> FoldResult:
    """History, loss curve, out-of-fold predictions and the export: the fold's outputs, written by one process."""
    config = experiment.config
    out = experiment.fold_dir(fold)
    history_file = out / "history.csv"
    history = pd.read_csv(history_file)
    # CSVLogger repeats its header when appending a second fit: drop those rows.
    history = history[history["epoch"].astype(str) != "epoch"].reset_index(drop=True)
    numeric = [c for c in history.columns if c != "time"]
    history[numeric] = history[numeric].apply(pd.to_numeric, errors="coerce")
    history = history.drop(columns=[c for c in ("step", "phase") if c in history.columns])
    # Each fit (and a resumed one) counts its epochs from 0: number them by phase instead.
    phases = _phases(config)
    names = [name for name, n, _ in phases for _ in range(n)][:len(history)]
    history.insert(0, "step", np.arange(len(history)))
    history.insert(1, "phase", names + ["unfrozen"] * (len(history) - len(names)))
    history["epoch"] = history.groupby("phase", sort=False).cumcount()
    write_csv(history, history_file)
    plot_history(history, out / "loss.png", f"{config.name} · fold {fold}")

    # OOF predictions from exactly what is exported: float32, runnable on any CPU.
    learn = remove_speed_callbacks(learn)
    preds, _ = learn.get_preds(dl=dls.valid)
    valid = dls.valid.items
    oof = pd.DataFrame({"id": valid["id"].to_numpy(), "fold": fold, "grade": valid["grade"].to_numpy()})
    if config.head == "regression":
        oof["value"] = preds.view(-1).numpy()
    else:
        for g in GRADES:
            oof[f"prob_{g}"] = preds[:, g].numpy()
    oof["pred"] = GradeRule.plain(config.head).grades(preds.numpy())
    write_csv(oof, out / "oof.csv")

    learn.dls.train.num_workers = learn.dls.valid.num_workers = 0
    with atomic_path(out / "export.pkl") as tmp:
        learn.export(tmp)
        # Never an export beside the fingerprint of another: the old one goes before the new export lands, and the
        # new one is written after it (a kill in between leaves an export of unknown origin, which is refused).
        (out / FINGERPRINT).unlink(missing_ok=True)
    write_provenance(out, config)
    qwk = quadratic_kappa(oof["pred"], oof["grade"])
    best_epoch = int(history["qwk"].to_numpy().argmax())
    config.save(out / "config.yaml")
    # The export is the fold's product; the checkpoints (model and optimizer, several times the model's size) are
    # only needed to resume.
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    (out / RESUME_STATE).unlink(missing_ok=True)
    if verbose:
        print(f"fold {fold}: QWK {qwk:.4f} (best epoch {best_epoch + 1}/{len(history)}) in {time.time() - start:.0f}s"
              f" → {out}")
    return FoldResult(fold, qwk, best_epoch, time.time() - start, out, float(lr))


def parse_fold_spec(spec: str, n_folds: int) -> list[int]:
    """``"all"`` → every fold; ``"2"`` or ``"0,3"`` → those folds, each checked against ``n_folds``."""
    if str(spec).strip().lower() == "all":
        return list(range(n_folds))
    try:
        folds = [int(part) for part in str(spec).split(",")]
    except ValueError:
        raise UserError(f"--fold '{spec}': give a fold number 0..{n_folds - 1}, a list like 0,2, or 'all'") from None
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad:
        raise UserError(f"--fold {bad[0]}: this config has n_folds={n_folds}, so folds go 0..{n_folds - 1}")
    return folds


#: seconds between the progress lines of folds training side by side
SIDE_BY_SIDE_PROGRESS_S = 60.0


def _fold_progress(experiment: Experiment, fold: int, total: int) -> str:
    """"fold K epoch E/N QWK q" from the epochs its history.csv holds so far (fastai's CSVLogger writes a row an
    epoch, and its header again at each fit)."""
    try:
        lines = (experiment.fold_dir(fold) / "history.csv").read_text(errors="replace").splitlines()
    except OSError:  # a fresh start removes an earlier run's history
        lines = []
    header = lines[0].split(",") if lines else []
    rows = [line.split(",") for line in lines if line[:1].isdigit()]
    if not rows or "qwk" not in header:
        return f"fold {fold} starting"
    return f"fold {fold} epoch {len(rows)}/{total} QWK {float(rows[-1][header.index('qwk')]):.3f}"


def train_side_by_side(experiment: Experiment, folds: list[int]) -> None:
    """Train ``folds`` ``folds_at_once`` at a time, each in its own ``retinopathy train --resume`` process (one GPU
    and the cores shared), its output in ``models/<exp>/train-fold<K>.log``; every running fold's epoch and QWK now
    and then, and a line per fold as it finishes.

    One fold at a time leaves a big GPU mostly idle (small images, a loader that restarts its workers every epoch):
    on an H100, aptos_gpu's five Lite0 folds trained side by side in 3.4 min, where one after another take about 9
    (1.7-1.9 min each), and to the same models.
    The data must be preprocessed and split first (the pipeline does that)."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor, wait

    from ..paths import DATA_DIR_ENV, OUTPUT_DIR_ENV

    config, paths = experiment.config, experiment.paths
    at_once = min(config.folds_at_once, len(folds))
    config_file = config.save(experiment.dir / "config.yaml")  # what every process trains, exactly
    # each process's own CPU work on its share of the cores (a caller's thread setting wins)
    env = {"OMP_NUM_THREADS": str(cores_per_fold(config)), **os.environ,
           DATA_DIR_ENV: str(paths.data), OUTPUT_DIR_ENV: str(paths.output)}
    print(f"training {len(folds)} folds ({', '.join(map(str, folds))}) side by side, {at_once} at a time; each "
          f"one's output in {experiment.dir / 'train-fold<K>.log'}", flush=True)

    def train(fold: int) -> tuple[int, int, Path]:
        log = experiment.dir / f"train-fold{fold}.log"
        command = [sys.executable, "-m", "retinopathy", "train", "--config", str(config_file), "--fold", str(fold),
                   "--resume"]
        with open(log, "a") as sink:
            code = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT).returncode
        mark = f"fold {fold}: QWK"  # the fold's closing line (a progress bar's remains may precede it)
        done = [line[line.index(mark):] for line in log.read_text(errors="replace").splitlines() if mark in line]
        print(done[-1] if code == 0 and done else f"fold {fold}: stopped (exit {code}); see {log}", flush=True)
        return fold, code, log

    total = sum(epochs for _, epochs, _ in _phases(config))
    with ThreadPoolExecutor(at_once) as pool:
        running = {pool.submit(train, fold): fold for fold in folds}
        while True:  # a line of every running fold's epoch now and then: long folds are not silent
            pending = wait(running, timeout=SIDE_BY_SIDE_PROGRESS_S).not_done
            if not pending:
                break
            started = [running[f] for f in pending if (experiment.fold_dir(running[f]) / "history.csv").is_file()]
            if started:
                print("side by side: " + " · ".join(_fold_progress(experiment, k, total) for k in sorted(started)),
                      flush=True)
        failed = [(fold, log) for fold, code, log in (f.result() for f in running) if code != 0]
    if failed:
        fold, log = failed[0]
        last = (log.read_text(errors="replace").strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"fold {fold} failed beside the others: {last} (whole output: {log}); the same command "
                        f"resumes, and folds_at_once=1 trains one at a time")


def train_folds(experiment: Experiment, spec: str = "all", resume: bool = False) -> list[FoldResult]:
    """Train the folds named by ``spec`` one after another."""
    return [train_fold(experiment, k, resume=resume) for k in parse_fold_spec(spec, experiment.config.n_folds)]
