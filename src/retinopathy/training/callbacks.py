"""fastai callbacks of this project, one concern each, found by type: bfloat16 on a CPU, the resume checkpoint, the
per-epoch seeding; and the CPU-safe batch-order broadcast for multi-process training."""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import SaveModelCallback, TrackerCallback
from fastai.torch_core import rank_distrib, set_seed

from ..files import write_text
from ..paths import FoldFiles


class CPUBFloat16(Callback):
    """Mixed precision on a CPU: fastai's ``MixedPrecision`` autocasts for CUDA only, so this autocasts the forward
    pass and the loss to bfloat16 on the CPU. The loss and the weights stay float32; use it with fastai's
    ``ChannelsLast``, the layout oneDNN's bf16 kernels want."""

    order = 10

    def before_batch(self):
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_pred(self):
        self.learn.pred = self.pred.float()

    def after_loss(self):
        self.autocast.__exit__(None, None, None)


def save_whole(learn, name: str, with_opt: bool) -> Path:
    """``learn.save(name)`` written beside and renamed into place, so ``<name>.pth`` is whole or absent; a failed
    write (a full disk) leaves no partial file either."""
    model_dir = Path(learn.path) / learn.model_dir
    if rank_distrib():  # fastai writes from process 0 alone
        return model_dir / f"{name}.pth"
    partial = model_dir / f"{name}-partial.pth"
    try:
        learn.save(partial.stem, with_opt=with_opt)
        os.replace(partial, model_dir / f"{name}.pth")
    finally:
        partial.unlink(missing_ok=True)
    return model_dir / f"{name}.pth"


class ResumeCheckpoint(Callback):
    """After every epoch: the model and the optimizer (``checkpoints/last.pth``) and where training stands (phase,
    epoch, best QWK so far) in ``state_file``, so an interrupted run can carry on. Written by process 0 only, file
    by file atomically."""

    order = 61  # after SaveModelCallback (60) has updated the best score

    def __init__(self, state_file: Path, phase: int, offset: int, tracker, fingerprint: str):
        self.state_file, self.phase, self.offset, self.tracker, self.fingerprint = (
            Path(state_file), phase, offset, tracker, fingerprint)

    def after_epoch(self):
        if rank_distrib():
            return
        save_whole(self.learn, FoldFiles.LAST, with_opt=True)
        smooth = self.learn.recorder.smooth_loss  # the table's train_loss: a running average across epochs
        state = {"phase": self.phase, "epoch": self.offset + self.epoch, "best": float(self.tracker.best),
                 "fingerprint": self.fingerprint, "smooth_loss": [float(smooth.val), int(smooth.count)]}
        write_text(self.state_file, json.dumps(state, indent=1))


class EpochSeed(Callback):
    """Each epoch's randomness (batch order, augmentation, dropout, the loader workers' seeds) from the run's seed,
    the phase and the epoch's number alone, so a run resumed after epoch k trains epoch k+1 exactly as an
    uninterrupted run does (no generator state has to be saved)."""

    order = -10  # before anything in the epoch draws a random number

    def __init__(self, seed: int, phase: int, offset: int = 0):
        self.seed, self.phase, self.offset = seed, phase, offset

    def before_epoch(self):
        epoch_seed = int(np.random.SeedSequence([self.seed, self.phase, self.offset + self.epoch]).generate_state(1)[0])
        set_seed(epoch_seed, reproducible=True)
        for dl in self.dls.loaders:  # fastai's loaders shuffle with a generator of their own
            for loader in (dl, getattr(dl, "dl", None)):  # and a distributed one's wrapped loader
                if loader is not None and hasattr(loader, "rng"):
                    loader.rng = random.Random(epoch_seed)


class EpochOffset(Callback):
    """fastai counts a fit's epochs from 0, and a resumed fit from 0 again with its running training loss afresh:
    number the printed and logged table from 1, on from where a resumed fit stopped, and carry on the running loss
    from there."""

    order = 51  # right after the Recorder has started the epoch's row (and reset its running loss)

    def __init__(self, offset: int, smooth_loss: tuple[float, int] | None = None):
        self.offset, self.smooth_loss = offset, smooth_loss

    def before_fit(self):
        """The running training loss where the interrupted fit left it."""
        if self.smooth_loss:
            val, count = self.smooth_loss
            self.learn.recorder.smooth_loss.val, self.learn.recorder.smooth_loss.count = torch.tensor(val), count

    def before_epoch(self):
        self.learn.recorder.log[0] = self.epoch + self.offset + 1


class KeepBest(SaveModelCallback):
    """fastai's ``SaveModelCallback`` (keep the best epoch by the monitored metric, reload it after the fit), saying
    the epoch as the table numbers it: from 1, counting on in a resumed fit."""

    def __init__(self, offset: int = 0, **options):
        super().__init__(**options)
        self.offset = offset

    def after_epoch(self):
        TrackerCallback.after_epoch(self)
        if self.new_best:
            print(f"best {self.monitor} so far, on the validation fold at epoch {self.epoch + self.offset + 1}: "
                  f"{self.best:.4f}", flush=True)
            self._save(self.fname)

    def _save(self, name):
        """Saved whole or not at all: a full disk never leaves a truncated best.pth to be reloaded."""
        self.last_saved_path = save_whole(self.learn, name, self.with_opt)


class PlainTable(Callback):
    """The epoch table as plain lines, for a log file or CI: fastai's console bar writes a '█' and a carriage
    return at every start, even with its bars hidden. Used in place of fastai's ProgressCallback off a terminal."""

    order = 60

    def before_fit(self):
        """Print the table's header; the Recorder then logs each epoch's row through :meth:`_write`."""
        self.learn.logger = self._write
        self._write(self.recorder.metric_names)

    def _write(self, row):
        cells = [f"{v:.6f}" if isinstance(v, float) else str(v) for v in row]
        print("  ".join(c.ljust(10) for c in cells).rstrip(), flush=True)


@contextlib.contextmanager
def gloo_safe_broadcast() -> Iterator[None]:
    """fastai's ``DistributedDL`` broadcasts the batch order through a CUDA tensor (NCCL only); on CPU processes
    (gloo) broadcast a CPU tensor instead, for the duration of the block only."""
    from fastai.distributed import DistributedDL

    def _broadcast(self, t, rank):
        t = torch.as_tensor(t, dtype=torch.long)
        torch.distributed.broadcast(t, rank)
        return t.tolist()

    original = DistributedDL.__dict__["_broadcast"]
    DistributedDL._broadcast = _broadcast
    try:
        yield
    finally:
        DistributedDL._broadcast = original


def tracker_callbacks(config, out: Path, fold: int) -> list[Callback]:
    """The experiment trackers the config's ``loggers`` names, as fastai callbacks writing under the fold's folder
    (TensorBoard: ``<fold>/tensorboard/``). Each tracker's package is imported only when it is named."""
    from ..errors import UserError

    callbacks: list[Callback] = []
    run_name = f"{config.name}-fold{fold}"
    for name in config.logger_names:
        try:
            if name == "tensorboard":
                from fastai.callback.tensorboard import TensorBoardCallback
                callbacks.append(TensorBoardCallback(log_dir=str(out / "tensorboard"), trace_model=False,
                                                     log_preds=False))
            elif name == "wandb":
                import wandb
                from fastai.callback.wandb import WandbCallback
                if wandb.run is None:
                    wandb.init(project="retinopathy", name=run_name, config=config.model_settings())
                callbacks.append(WandbCallback(log_preds=False, log_model=False))
            elif name == "mlflow":
                # fastai has no MLflow callback of its own; MLflow's autologging hooks fastai's fit instead.
                import mlflow.fastai
                mlflow.fastai.autolog(log_models=False)
        except ImportError as e:
            raise UserError(f"config: loggers names {name}, but its package is missing ({e.name}): "
                            f"pip install {'tensorboard' if name == 'tensorboard' else name}") from None
    return callbacks
