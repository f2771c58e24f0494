"""Several folds trained side by side (``folds_at_once``): each its own ``retinopathy train --resume`` process with
its share of the cores, and a line now and then of where each one is."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from .device import visible_gpus
from .errors import UserError
from .experiment import Experiment
from .files import die_with_parent
from .training.dataloaders import cores_per_fold
from .training.train import phases_of

#: seconds between the progress lines of folds training side by side
SIDE_BY_SIDE_PROGRESS_S = 60.0


def _fold_progress(experiment: Experiment, fold: int, total: int) -> str:
    """"fold K epoch E/N QWK q" from the epochs its history.csv holds so far (fastai's CSVLogger writes a row an
    epoch, and its header again at each fit)."""
    try:
        lines = experiment.fold_files(fold).history.read_text(errors="replace").splitlines()
    except OSError:  # a fresh start removes an earlier run's history
        lines = []
    header = lines[0].split(",") if lines else []
    rows = [line.split(",") for line in lines if line[:1].isdigit()]
    if not rows or "qwk" not in header:
        return f"fold {fold} starting"
    return f"fold {fold} epoch {len(rows)}/{total} QWK {float(rows[-1][header.index('qwk')]):.3f}"


def launch_plan(folds: list[int], threads: int, gpus: list[str]) -> dict[int, dict[str, str]]:
    """Each fold process's own environment: its share of the cores (``OMP_NUM_THREADS``) and, where there are
    GPUs, one of them round robin (``CUDA_VISIBLE_DEVICES``: Kaggle's T4 x2 trains two folds, one on each)."""
    plan = {}
    for i, fold in enumerate(folds):
        plan[fold] = {"OMP_NUM_THREADS": str(threads)}
        if gpus:
            plan[fold]["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
    return plan


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

    from .paths import DATA_DIR_ENV, OUTPUT_DIR_ENV

    config, paths = experiment.config, experiment.paths
    at_once = min(config.folds_at_once, len(folds))
    config_file = config.save(experiment.files.config)  # what every process trains, exactly
    gpus = visible_gpus()
    plan = launch_plan(folds, cores_per_fold(config), gpus)
    where = f" on GPUs {', '.join(sorted(set(gpus)))}" if len(gpus) > 1 else ""
    print(f"training {len(folds)} folds ({', '.join(map(str, folds))}) side by side, {at_once} at a time{where}; "
          f"each one's output in {experiment.files.train_log('<K>')}", flush=True)

    parent = os.getpid()

    def train(fold: int) -> tuple[int, int, Path]:
        log = experiment.files.train_log(fold)
        command = [sys.executable, "-m", "retinopathy", "train", "--config", str(config_file), "--fold", str(fold),
                   "--resume"]
        with open(log, "a") as sink:
            # each process's own share of the cores (a caller's thread setting wins) and its GPU
            env = {"OMP_NUM_THREADS": plan[fold]["OMP_NUM_THREADS"], **os.environ,
                   **{k: v for k, v in plan[fold].items() if k != "OMP_NUM_THREADS"},
                   DATA_DIR_ENV: str(paths.data), OUTPUT_DIR_ENV: str(paths.output)}
            # the child dies with this process however it ends (a kill leaves no orphan writing to the fold)
            code = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                  preexec_fn=functools.partial(die_with_parent, parent)).returncode
        mark = f"fold {fold}: QWK"  # the fold's closing line (a progress bar's remains may precede it)
        done = [line[line.index(mark):] for line in log.read_text(errors="replace").splitlines() if mark in line]
        print(done[-1] if code == 0 and done else f"fold {fold}: stopped (exit {code}); see {log}", flush=True)
        return fold, code, log

    total = sum(epochs for _, epochs, _ in phases_of(config))
    with ThreadPoolExecutor(at_once) as pool:
        running = {pool.submit(train, fold): fold for fold in folds}
        while True:  # a line of every running fold's epoch now and then: long folds are not silent
            pending = wait(running, timeout=SIDE_BY_SIDE_PROGRESS_S).not_done
            if not pending:
                break
            started = [running[f] for f in pending if experiment.fold_files(running[f]).history.is_file()]
            if started:
                print("side by side: " + " · ".join(_fold_progress(experiment, k, total) for k in sorted(started)),
                      flush=True)
        failed = [(fold, log) for fold, code, log in (f.result() for f in running) if code != 0]
    if failed:
        fold, log = failed[0]
        last = (log.read_text(errors="replace").strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"fold {fold} failed beside the others: {last} (whole output: {log}); the same command "
                        f"resumes, and folds_at_once=1 trains one at a time")


