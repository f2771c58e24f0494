"""Train one fold with fastai: ``train_fold(experiment, fold)``, looped over folds, never copied per fold.

Outputs in ``models/<exp>/fold<K>/``: ``export.pkl`` (the learner, loadable with ``load_learner(cpu=True)``),
``oof.csv`` (out-of-fold predictions), ``history.csv``, ``loss.png`` and the resolved ``config.yaml``.
"""

from __future__ import annotations

import json
import os
import shutil
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
from .io import atomic_path, pyplot, save_figure, write_csv, write_text
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


def torchvision_weights_file(name: str) -> Path | None:
    """Where torchvision keeps (or would download) the default ImageNet weights of ``name``."""
    import torchvision.models as tvm
    try:
        url = tvm.get_model_weights(name).DEFAULT.url
    except (ValueError, AttributeError, KeyError):
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _looks_like_download_failure(error: BaseException) -> bool:
    import urllib.error
    names = {type(e).__name__ for e in (error, error.__cause__, error.__context__) if e is not None}
    return isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError, OSError)) or bool(
        names & {"LocalEntryNotFoundError", "ConnectError", "ConnectionError", "HfHubHTTPError", "MaxRetryError"})


def _no_weights_message(name: str, arch, error: BaseException) -> str:
    reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
    if callable(arch):  # torchvision
        target = torchvision_weights_file(name)
        where = f"put the weights file at {target}" if target else "put the weights in torch's hub cache"
        return (f"pretrained weights for {name} are not cached and could not be downloaded ({reason}): {where} "
                f"(copy it from a machine with internet; $TORCH_HOME moves the cache), or set pretrained=false")
    return (f"pretrained weights for timm model {name} are not cached and could not be downloaded ({reason}): "
            f"fill the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME) on a machine with internet, "
            f"or set pretrained=false")


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
    arch = resolve_arch(config.arch)
    try:
        learn = vision_learner(dls, arch, pretrained=config.pretrained, loss_func=loss, metrics=metrics,
                               ps=config.ps, wd=config.wd, path=path, model_dir="checkpoints", **extra)
    except Exception as e:  # noqa: BLE001 - any failure to fetch weights ends the same way for the user
        if config.pretrained and _looks_like_download_failure(e):
            raise UserError(_no_weights_message(config.arch, arch, e)) from None
        raise
    if config.mixed_precision and torch.cuda.is_available():
        learn = learn.to_fp16()
    elif config.mixed_precision and cpu_has_native_bf16():
        learn.add_cbs(cpu_bf16_callbacks())
    return learn


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX): there bf16 autocast with channels-last
    roughly halves a training step; elsewhere it is emulated and slower, so it stays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_bf16_callbacks():
    """Mixed precision on a CPU: fastai's MixedPrecision autocasts for CUDA only, so this does it for the CPU, with
    the channels-last layout oneDNN's bf16 kernels want. The loss and the weights stay float32."""
    from fastai.callback.channelslast import ChannelsLast
    from fastai.callback.core import Callback

    class CPUBFloat16(Callback):
        order = 10

        def before_batch(self):
            self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
            self.autocast.__enter__()

        def after_pred(self):
            self.learn.pred = self.pred.float()

        def after_loss(self):
            self.autocast.__exit__(None, None, None)

    return [ChannelsLast(), CPUBFloat16()]


def remove_speed_callbacks(learn):
    """The exported learner predicts in float32 on any CPU, whatever trained it."""
    from fastai.callback.channelslast import ChannelsLast
    learn = learn.to_fp32()
    for cb in [cb for cb in learn.cbs if isinstance(cb, ChannelsLast) or type(cb).__name__ == "CPUBFloat16"]:
        learn.remove_cb(cb)
    learn.model = learn.model.to(memory_format=torch.contiguous_format)
    return learn


# ----------------------------------------------------------------------------------------- one fold
@dataclass
class FoldResult:
    fold: int
    qwk: float
    best_epoch: int
    seconds: float
    dir: Path
    #: the peak learning rate of the last phase (the config's, or lr_find's pick)
    lr: float = 0.0


def fold_is_done(experiment: Experiment, fold: int) -> bool:
    """A fold is up to date when its export and OOF exist and were made by this very config."""
    d = experiment.fold_dir(fold)
    saved = d / "config.yaml"
    return ((d / "export.pkl").is_file() and (d / "oof.csv").is_file() and saved.is_file()
            and saved.read_text().split("\n", 1)[1] == experiment.config.to_yaml())


def draw_history(ax, history: pd.DataFrame, legend_size=None) -> None:
    """Train and valid loss (left axis) and validation QWK (right axis) per epoch on one matplotlib axis."""
    epochs = np.arange(1, len(history) + 1)
    ax.plot(epochs, history["train_loss"], "o-", label="train loss")
    ax.plot(epochs, history["valid_loss"], "o-", label="valid loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, history["qwk"], "s--", color="tab:green", label="valid QWK")
    ax2.set_ylabel("QWK")
    ax2.set_ylim(min(0, float(np.nanmin(history["qwk"]))), 1)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=legend_size)


def plot_history(history: pd.DataFrame, path: Path, title: str) -> None:
    """Loss curves and validation QWK per epoch, one PNG a person can read at a glance."""
    fig, ax = pyplot().subplots(figsize=(7, 4))
    draw_history(ax, history)
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------- fitting, resumable
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


def resume_checkpoint(state_file: Path, phase: int, offset: int, tracker, config_yaml: str):
    """A fastai callback saving, after every epoch, the model, the optimizer and where training stands (phase,
    epoch, best QWK so far) so ``--resume`` can carry on. Written by process 0 only, file by file atomically."""
    from fastai.callback.core import Callback
    from fastai.torch_core import rank_distrib

    class ResumeCheckpoint(Callback):
        order = 61  # after SaveModelCallback (60) has updated the best score

        def after_epoch(self):
            if rank_distrib():
                return
            model_dir = self.learn.path / self.learn.model_dir
            self.learn.save("last-partial", with_opt=True)
            os.replace(model_dir / "last-partial.pth", model_dir / "last.pth")
            state = {"phase": phase, "epoch": offset + self.epoch, "best": float(tracker.best), "config": config_yaml}
            write_text(state_file, json.dumps(state, indent=1))

    return ResumeCheckpoint()


def _phases(config) -> list[tuple[str, int, object]]:
    """(name, epochs, learning rate) of each fit: the head alone first when the body is pretrained, then all."""
    lr = slice(config.lr_min, config.lr) if config.lr_min > 0 else config.lr
    phases = []
    if config.pretrained and config.freeze_epochs > 0:
        phases.append(("frozen", config.freeze_epochs, config.lr))
    phases.append(("unfrozen", config.epochs, lr))
    return phases


def _resume_state(out: Path, config) -> dict | None:
    """Where an interrupted run of this very config stopped, if it left a checkpoint."""
    state_file = out / RESUME_STATE
    if not state_file.is_file() or not (out / "checkpoints" / "last.pth").is_file():
        return None
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("config") == config.to_yaml() else None


def run_lr_find(learn, out: Path, config) -> float:
    """fastai's learning-rate finder: its plot (with the suggestion marked) saved as ``lr_find.png``, the curve as
    ``lr_find.csv``; returns the suggested rate (the valley)."""
    from fastai.callback.schedule import valley

    suggestion = learn.lr_find(suggest_funcs=(valley,), show_plot=False)
    recorder = learn.recorder
    curve = pd.DataFrame({"lr": [float(x) for x in recorder.lrs], "loss": [float(x) for x in recorder.losses]})
    write_csv(curve, out / "lr_find.csv")
    fig, ax = pyplot().subplots(figsize=(6, 4))
    shown = curve.iloc[:-5] if len(curve) > 10 else curve  # the last points shoot up and flatten the plot
    ax.plot(shown["lr"], shown["loss"])
    ax.axvline(suggestion.valley, color="tab:red", linestyle="--", label=f"valley {suggestion.valley:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title(f"{config.name}: lr_find" + (" (suggestion used)" if config.lr_find == "pick"
                                              else f" (config lr {config.lr:.1e} used)"))
    fig.tight_layout()
    write_text(out / "lr_find.json", json.dumps({"suggestion": float(suggestion.valley),
                                                 "used": config.lr_find == "pick"}))
    save_figure(fig, out / "lr_find.png")
    return float(suggestion.valley)


def _distributed() -> bool:
    from fastai.torch_core import num_distrib
    return num_distrib() > 1


def _gloo_safe_broadcast() -> None:
    """fastai's DistributedDL broadcasts batch order through a CUDA tensor (NCCL only). On CPU processes (gloo), as
    in the CPU test of multi-process training, broadcast a CPU tensor instead."""
    from fastai.distributed import DistributedDL

    def _broadcast(self, t, rank):
        t = torch.as_tensor(t, dtype=torch.long)
        torch.distributed.broadcast(t, rank)
        return t.tolist()
    DistributedDL._broadcast = _broadcast


def train_fold(experiment: Experiment, fold: int, verbose: bool = True, resume: bool = False,
               callbacks=()) -> FoldResult | None:
    """Train on every fold but ``fold``, validate on it, keep the best epoch by QWK, and write the fold's files.

    ``resume``: carry on from the last finished epoch of an interrupted run of the same config. Under a launcher
    (``torchrun`` / ``accelerate launch``) every process trains on its share of each batch and process 0 writes
    the outputs; the others return None.
    """
    from fastai.callback.progress import CSVLogger
    from fastai.callback.tracker import SaveModelCallback
    from fastai.torch_core import rank_distrib, set_seed

    import fastprogress.fastprogress

    # fastprogress redraws its bars with carriage returns; in a log file or CI that is noise. Keep the epoch table.
    fastprogress.fastprogress.NO_BAR = not sys.stdout.isatty()
    config = experiment.config
    out = experiment.fold_dir(fold)
    main_process = rank_distrib() == 0
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        config.save(experiment.dir / "config.yaml")
    start = time.time()
    set_seed(config.seed + fold, reproducible=True)
    table = training_table(experiment)
    dls = build_dataloaders(table, experiment, fold)
    learn = build_learner(dls, experiment, out)
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
            ratio = config.lr / config.lr_min if config.lr_min > 0 else None
            picked = slice(suggested / ratio, suggested) if ratio else suggested
            phases = [(name, n, suggested if name == "frozen" else picked) for name, n, _ in phases]

    distributed = _distributed()
    if distributed and not torch.cuda.is_available():
        _gloo_safe_broadcast()
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
                    continue
        cbs = [tracker, resume_checkpoint(out / RESUME_STATE, index, start_epoch, tracker, config.to_yaml()),
               *callbacks]
        if main_process:
            cbs.insert(0, CSVLogger(fname="history.csv", append=True))
        if distributed:
            # SyncBatchNorm exists only on CUDA; CPU processes (gloo) keep per-process batch statistics.
            with learn.distrib_ctx(sync_bn=torch.cuda.is_available(), cpu=not torch.cuda.is_available()):
                fit_one_cycle_from(learn, n_epoch, lr, start_epoch, cbs)
        else:
            fit_one_cycle_from(learn, n_epoch, lr, start_epoch, cbs)  # the best epoch is reloaded at the end
    if distributed:
        torch.distributed.barrier()  # every process has finished fitting
        if not main_process:
            return None
        # Process 0 writes the outputs alone; fastai gathers predictions whenever WORLD_SIZE > 1.
        os.environ["WORLD_SIZE"] = "1"
    peak = phases[-1][2]
    return _finish_fold(learn, dls, experiment, fold, start, verbose, peak.stop if isinstance(peak, slice) else peak)


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
        for g in range(N_GRADES):
            oof[f"prob_{g}"] = preds[:, g].numpy()
    oof["pred"] = to_grades(preds.numpy())
    write_csv(oof, out / "oof.csv")

    learn.dls.train.num_workers = learn.dls.valid.num_workers = 0
    with atomic_path(out / "export.pkl") as tmp:
        learn.export(tmp)
    qwk = quadratic_kappa(oof["value"].to_numpy() if config.head == "regression" else
                          oof[[f"prob_{g}" for g in range(N_GRADES)]].to_numpy(), oof["grade"])
    best_epoch = int(history["qwk"].to_numpy().argmax())
    config.save(out / "config.yaml")  # written last: its presence with the export marks the fold complete
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


def train_folds(experiment: Experiment, spec: str = "all", resume: bool = False) -> list[FoldResult]:
    """Train the folds named by ``spec`` one after another."""
    return [train_fold(experiment, k, resume=resume) for k in parse_fold_spec(spec, experiment.config.n_folds)]
