"""Train one fold with fastai: ``train_fold(experiment, fold)``, looped over folds, never copied per fold.

Outputs in ``models/<exp>/fold<K>/``: ``export.pkl`` (the learner, loadable with ``load_learner(cpu=True)``),
``oof.csv`` (out-of-fold predictions), ``history.csv``, ``loss.png`` and the resolved ``config.yaml``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import UserError
from .experiment import Experiment
from .io import atomic_path, write_csv
from .preprocess import MANIFEST

#: Regression predictions are cut into grades at these values unless thresholds were tuned on OOF predictions.
DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
N_GRADES = 5


# ----------------------------------------------------------------------------------------- metrics and losses
def to_grades(preds, thresholds=DEFAULT_THRESHOLDS) -> np.ndarray:
    """Class probabilities (n × 5) → argmax; regression values (n or n × 1) → grades cut at ``thresholds``."""
    preds = np.asarray(preds)
    if preds.ndim == 2 and preds.shape[1] > 1:
        return preds.argmax(axis=1)
    return np.digitize(preds.reshape(-1), thresholds)


def quadratic_kappa(preds, targs) -> float:
    """Quadratic weighted kappa, the competitions' metric (scikit-learn's implementation)."""
    from sklearn.metrics import cohen_kappa_score
    grades = to_grades(preds)
    targs = np.asarray(targs).reshape(-1).round().astype(int)
    if len(np.unique(np.concatenate([grades, targs]))) < 2:
        return 0.0  # kappa is undefined when a single grade is seen: say "no agreement beyond chance"
    return float(cohen_kappa_score(targs, grades, weights="quadratic", labels=list(range(N_GRADES))))


def grade_accuracy(preds, targs) -> float:
    return float((to_grades(preds) == np.asarray(targs).reshape(-1).round().astype(int)).mean())


def grade_error_rate(preds, targs) -> float:
    return 1.0 - grade_accuracy(preds, targs)


def class_weights(grades, alpha: float) -> np.ndarray:
    """Per-grade weights ``freq ** -alpha``, scaled so the average training sample weighs 1.

    alpha = 0 keeps the natural frequencies, alpha = 1 makes every grade count equally; grades absent from the
    training set get the largest weight seen (they cannot be sampled anyway).
    """
    counts = np.bincount(np.asarray(grades, int), minlength=N_GRADES).astype(float)
    freq = counts / counts.sum()
    weights = np.where(counts > 0, np.power(np.where(freq > 0, freq, 1.0), -alpha), 0.0)
    weights[counts == 0] = weights.max()
    return weights / (weights[np.asarray(grades, int)].mean())


class WeightedRegressionLoss(nn.Module):
    """MSE or smooth-L1 on the grade, each sample weighted by its true grade's class weight."""

    def __init__(self, kind: str = "smooth_l1", weights=None):
        super().__init__()
        self.kind = kind
        self.register_buffer("weights", torch.as_tensor(weights if weights is not None else np.ones(N_GRADES),
                                                        dtype=torch.float32))

    def forward(self, preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
        preds, targs = preds.float().view(-1), targs.float().view(-1)
        fn = nn.functional.mse_loss if self.kind == "mse" else nn.functional.smooth_l1_loss
        loss = fn(preds, targs, reduction="none")
        w = self.weights[targs.round().clamp(0, N_GRADES - 1).long()]
        return (loss * w).sum() / w.sum()


# ----------------------------------------------------------------------------------------- data
def training_table(experiment: Experiment) -> pd.DataFrame:
    """Folds joined with the preprocessed images: columns id, grade, fold, path (bad images left out, and said)."""
    for path, stage in ((experiment.folds_csv, "make_folds.py"), (experiment.processed_dir / MANIFEST, "preprocess.py")):
        if not path.is_file():
            raise UserError(f"{path} not found: run scripts/{stage} with this config first")
    folds = pd.read_csv(experiment.folds_csv, dtype={"id": str})
    manifest = pd.read_csv(experiment.processed_dir / MANIFEST, dtype={"id": str}, keep_default_na=False)
    usable = manifest[manifest["path"] != ""][["id", "path"]]
    table = folds.merge(usable, on="id", how="inner")
    dropped = len(folds) - len(table)
    if dropped:
        print(f"note: {dropped} labelled image(s) have no preprocessed file (see {experiment.processed_dir / MANIFEST})")
    return table.reset_index(drop=True)


def _num_workers(config) -> int:
    if config.num_workers >= 0:
        return config.num_workers
    # Cached PNGs at training size decode fast: on a CPU, extra worker processes only steal the model's cores.
    return min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0


def build_dataloaders(table: pd.DataFrame, experiment: Experiment, fold: int):
    """fastai DataLoaders for one fold: the fold's rows validate, the rest train (oversampled if asked)."""
    from fastai.vision.all import (CategoryBlock, ColReader, DataBlock, ImageBlock, IndexSplitter, Normalize,
                                   RegressionBlock, imagenet_stats)

    from .augment import AlbumentationsTransform

    config = experiment.config
    valid_idx = np.flatnonzero(table["fold"].to_numpy() == fold)
    if len(valid_idx) == 0 or len(valid_idx) == len(table):
        raise UserError(f"fold {fold} is empty or holds every image: folds go 0..{table['fold'].max()}")
    regression = config.head == "regression"
    table = table.assign(target=table["grade"].astype(float) if regression else table["grade"])
    block = RegressionBlock(n_out=1) if regression else CategoryBlock(vocab=list(range(N_GRADES)))
    batch_tfms = [] if config.pretrained else [Normalize.from_stats(*imagenet_stats)]  # fastai adds it if pretrained
    dblock = DataBlock(blocks=(ImageBlock, block), get_x=ColReader("path"), get_y=ColReader("target"),
                       splitter=IndexSplitter(valid_idx),
                       item_tfms=[AlbumentationsTransform()] if config.augment else [], batch_tfms=batch_tfms)
    common = dict(bs=config.batch_size, num_workers=_num_workers(config), device=None)
    if config.balance == "sampler":
        train_grades = table["grade"].to_numpy()
        sample_weights = class_weights(np.delete(train_grades, valid_idx), config.balance_alpha)[train_grades]
        return dblock.weighted_dataloaders(table, wgts=sample_weights, **common)
    return dblock.dataloaders(table, **common)


# ----------------------------------------------------------------------------------------- the model
def resolve_arch(name: str):
    """A torchvision model function by name, else the name itself for fastai to build through timm."""
    import torchvision.models as tvm
    fn = getattr(tvm, name, None)
    if callable(fn) and name.islower():
        return fn
    try:
        import timm
    except ImportError:
        raise UserError(f"arch '{name}' is not a torchvision model, and timm (for other names) is not installed: "
                        "pip install timm, or use e.g. resnet18, resnet34, resnet50, efficientnet_b0") from None
    if not timm.list_models(name):
        raise UserError(f"unknown arch '{name}': not a torchvision or timm model name")
    return name


def build_learner(dls, experiment: Experiment, path: Path):
    from fastai.vision.all import AccumMetric, CrossEntropyLossFlat, vision_learner

    config = experiment.config
    metrics = [AccumMetric(quadratic_kappa, flatten=False, to_np=True, name="qwk"),
               AccumMetric(grade_accuracy, flatten=False, to_np=True, name="accuracy"),
               AccumMetric(grade_error_rate, flatten=False, to_np=True, name="error_rate")]
    train_grades = np.asarray([int(round(float(y))) for y in dls.train_ds.items["grade"]])
    weights = class_weights(train_grades, config.balance_alpha) if config.balance == "loss" else None
    if config.head == "regression":
        loss = WeightedRegressionLoss(config.regression_loss, weights)
        extra = dict(n_out=1, y_range=(-0.5, N_GRADES - 0.5))
    else:
        loss = CrossEntropyLossFlat(weight=torch.as_tensor(weights, dtype=torch.float32) if weights is not None
                                    else None)
        extra = {}
    learn = vision_learner(dls, resolve_arch(config.arch), pretrained=config.pretrained, loss_func=loss,
                           metrics=metrics, ps=config.ps, wd=config.wd, path=path, model_dir="checkpoints", **extra)
    if torch.cuda.is_available() and config.mixed_precision:
        learn = learn.to_fp16()
    return learn


# ----------------------------------------------------------------------------------------- one fold
@dataclass
class FoldResult:
    fold: int
    qwk: float
    best_epoch: int
    seconds: float
    dir: Path


def fold_is_done(experiment: Experiment, fold: int) -> bool:
    """A fold is up to date when its export and OOF exist and were made by this very config."""
    d = experiment.fold_dir(fold)
    saved = d / "config.yaml"
    return ((d / "export.pkl").is_file() and (d / "oof.csv").is_file() and saved.is_file()
            and saved.read_text().split("\n", 1)[1] == experiment.config.to_yaml())


def plot_history(history: pd.DataFrame, path: Path, title: str) -> None:
    """Loss curves and validation QWK per epoch, one PNG a person can read at a glance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = np.arange(1, len(history) + 1)
    ax.plot(epochs, history["train_loss"], "o-", label="train loss")
    ax.plot(epochs, history["valid_loss"], "o-", label="valid loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, history["qwk"], "s--", color="tab:green", label="valid QWK")
    ax2.set_ylabel("QWK")
    ax2.set_ylim(min(0, history["qwk"].min()), 1)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def train_fold(experiment: Experiment, fold: int, verbose: bool = True) -> FoldResult:
    """Train on every fold but ``fold``, validate on it, keep the best epoch by QWK, and write the fold's files."""
    from fastai.callback.progress import CSVLogger
    from fastai.callback.tracker import SaveModelCallback
    from fastai.torch_core import set_seed

    import fastprogress.fastprogress

    # fastprogress redraws its bars with carriage returns; in a log file or CI that is noise. Keep the epoch table.
    fastprogress.fastprogress.NO_BAR = not sys.stdout.isatty()
    config = experiment.config
    out = experiment.fold_dir(fold)
    out.mkdir(parents=True, exist_ok=True)
    config.save(experiment.dir / "config.yaml")
    start = time.time()
    set_seed(config.seed + fold, reproducible=True)
    table = training_table(experiment)
    dls = build_dataloaders(table, experiment, fold)
    learn = build_learner(dls, experiment, out)
    history_file = out / "history.csv"
    history_file.unlink(missing_ok=True)
    cbs = [CSVLogger(fname="history.csv", append=True), SaveModelCallback(monitor="qwk", comp=np.greater, fname="best")]
    lr = slice(config.lr_min, config.lr) if config.lr_min > 0 else config.lr
    if config.pretrained and config.freeze_epochs > 0:
        learn.fit_one_cycle(config.freeze_epochs, config.lr, cbs=cbs)
        learn.unfreeze()
    learn.fit_one_cycle(config.epochs, lr, cbs=cbs)  # SaveModelCallback reloads the best epoch at the end

    history = pd.read_csv(history_file)
    # CSVLogger repeats its header when appending a second fit: drop those rows.
    history = history[history["epoch"].astype(str) != "epoch"].reset_index(drop=True)
    numeric = [c for c in history.columns if c != "time"]
    history[numeric] = history[numeric].apply(pd.to_numeric, errors="coerce")
    history.insert(0, "step", np.arange(len(history)))
    write_csv(history, history_file)
    plot_history(history, out / "loss.png", f"{config.name} · fold {fold}")

    preds, _ = learn.get_preds(dl=dls.valid)
    valid = dls.valid.items
    oof = pd.DataFrame({"id": valid["id"].to_numpy(), "fold": fold, "grade": valid["grade"].to_numpy()})
    if config.head == "regression":
        oof["value"] = preds.view(-1).numpy()
    else:
        for g in range(N_GRADES):
            oof[f"prob_{g}"] = preds[:, g].numpy()
    oof["pred"] = to_grades(preds.numpy())
    write_csv(oof, out / "oof.csv")

    if torch.cuda.is_available() and config.mixed_precision:
        learn = learn.to_fp32()  # the exported learner must run on a CPU
    learn.dls.train.num_workers = learn.dls.valid.num_workers = 0
    with atomic_path(out / "export.pkl") as tmp:
        learn.export(tmp)
    qwk = quadratic_kappa(oof["value"].to_numpy() if config.head == "regression" else
                          oof[[f"prob_{g}" for g in range(N_GRADES)]].to_numpy(), oof["grade"])
    best_epoch = int(history["qwk"].to_numpy().argmax())
    config.save(out / "config.yaml")  # written last: its presence with the export marks the fold complete
    if verbose:
        print(f"fold {fold}: QWK {qwk:.4f} (best epoch {best_epoch + 1}/{len(history)}) in {time.time() - start:.0f}s"
              f" → {out}")
    return FoldResult(fold, qwk, best_epoch, time.time() - start, out)


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


def train_folds(experiment: Experiment, spec: str = "all") -> list[FoldResult]:
    """Train the folds named by ``spec`` one after another."""
    return [train_fold(experiment, k) for k in parse_fold_spec(spec, experiment.config.n_folds)]
