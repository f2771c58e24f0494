"""Training throughput, side by side in one run, for each config on this machine's device:

  loader        the training DataLoader alone (decode + augmentation + batching), images/s, for 0..N workers
  model         the network alone: forward + backward + optimizer step on random tensors of the batch's shape, with
                the config's precision and memory format (and float32 channels-last beside it on a CPU)
  training      real training steps (fastai's fit on the fold's images), images/s after the first batches

and last, one line per config: ``throughput ratio (training / model alone): <config> X.XX``. A ratio near 1 means
the loader keeps up and training runs at the network's own speed; well below it, the loader is the bottleneck.

  python benchmarks/throughput.py                                  # demo and aptos_cpu (on ../shared's APTOS)
  python benchmarks/throughput.py --configs debug --steps 4        # what the tests run
  python benchmarks/throughput.py --configs demo --compile         # torch.compile beside eager, for the network
  python benchmarks/throughput.py --configs aptos_gpu --raw-dir /data/aptos2019   # on a GPU box
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "throughput"
APTOS = REPO.parent / "shared" / "data" / "aptos2019-224"


def experiment_for(name: str, raw_dir: Path | None, overrides: list[str]):
    """The config's experiment with its data prepared (preprocessed, folds) under benchmarks/out/throughput."""
    from retinopathy.config import load_config
    from retinopathy.data.folds import make_folds
    from retinopathy.experiment import Experiment
    from retinopathy.paths import Paths
    from retinopathy.pipeline import ensure_raw_data
    from retinopathy.preprocessing.stage import preprocess

    extra = [f"raw_dir={raw_dir}", "synthetic_images=0"] if raw_dir else []
    config = load_config(name, [*extra, *overrides, f"name=throughput-{Path(name).stem}"])
    experiment = Experiment(config, Paths(data=OUT / "data", output=OUT))
    ensure_raw_data(experiment)
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        preprocess(experiment)
        make_folds(experiment, verbose=False)
    return experiment


def loader_rate(experiment, workers: int, batches: int) -> float:
    """Images per second of the training DataLoader alone."""
    from retinopathy.data.folds import training_table
    from retinopathy.training.dataloaders import build_dataloaders

    experiment = type(experiment)(experiment.config.replace(num_workers=workers), experiment.paths)
    dl = build_dataloaders(training_table(experiment), experiment, 0).train
    seen, elapsed, done = 0, 0.0, 0
    while done < batches:
        last = None  # each pass's first batch pays for starting the workers: not counted
        for x, _ in dl:
            now = time.perf_counter()
            if last is not None:
                seen, elapsed, done = seen + len(x), elapsed + now - last, done + 1
            last = now
            if done >= batches:
                break
    return seen / elapsed


def learner(experiment):
    from retinopathy.data.folds import training_table
    from retinopathy.training.dataloaders import build_dataloaders
    from retinopathy.training.models import build_learner

    dls = build_dataloaders(training_table(experiment), experiment, 0)
    return build_learner(dls, experiment, OUT / "models" / experiment.config.name)


def model_rate(experiment, steps: int, channels_last: bool | None = None, compiled: bool = False
               ) -> tuple[float, str]:
    """Images per second of forward + backward + optimizer step alone, at the config's precision; returns the rate
    and a word on the precision and memory format used (and, ``compiled``, the seconds ``torch.compile`` took)."""
    import torch
    from retinopathy.heads import get_head
    from retinopathy.training.callbacks import CPUBFloat16

    learn = learner(experiment)
    model, config = learn.model, experiment.config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    bf16 = any(isinstance(cb, CPUBFloat16) for cb in learn.cbs)
    fp16 = device == "cuda" and config.mixed_precision
    if channels_last is None:
        channels_last = bf16 or fp16 or any(type(cb).__name__ == "ChannelsLast" for cb in learn.cbs)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    learn.create_opt()
    opt = learn.opt
    forward = torch.compile(model) if compiled else model
    x = torch.randn(config.batch_size, 3, config.image_size, config.image_size, device=device).to(memory_format=fmt)
    grades = torch.randint(0, 5, (config.batch_size,), device=device)
    y = grades if get_head(config.head).categorical_targets else grades.float()
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    dtype = torch.bfloat16 if bf16 else torch.float16
    autocast = torch.autocast(device, dtype=dtype) if (bf16 or fp16) else contextlib.nullcontext()

    def step():
        with autocast:
            loss = learn.loss_func(forward(x), y)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt.opt if hasattr(opt, "opt") else opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad()

    warm_up = time.perf_counter()
    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    warm_up = time.perf_counter() - warm_up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    precision = "bf16" if bf16 else "fp16" if fp16 else "float32"
    return steps * config.batch_size / (time.perf_counter() - start), \
        f"{precision}, {'channels-last' if channels_last else 'contiguous'}" + \
        (f", torch.compile, compiled and warmed up in {warm_up:.0f} s" if compiled else "")


def training_rate(experiment, batches: int) -> float:
    """Images per second of real training steps (fastai's fit on the fold's images), after the first two batches."""
    from fastai.callback.core import Callback, CancelFitException

    class Clock(Callback):
        """Time between consecutive training batches (loading included), validation and each epoch's first
        batch left out."""
        order = 99

        def before_fit(self):
            self.images, self.elapsed, self.counted = 0, 0.0, 0

        def before_train(self):
            self.last = None

        def after_batch(self):
            if not self.training:
                return
            now = time.perf_counter()
            if self.last is not None:
                self.images, self.elapsed = self.images + len(self.xb[0]), self.elapsed + now - self.last
                self.counted += 1
            self.last = now
            if self.counted >= batches:
                raise CancelFitException()

    learn = learner(experiment)
    clock = Clock()
    per_epoch = max(1, len(learn.dls.train) - 1)
    with learn.no_bar(), learn.no_logging():
        learn.fit(-(-batches // per_epoch) + 1, 1e-3, cbs=[clock])
    return clock.images / clock.elapsed


def save_augmentation_samples(experiment, path: Path, n: int = 8) -> Path:
    """A PNG grid: the same training images augmented per item (albumentations) and per batch (fastai on the
    device), to check by eye that both are alike in kind and strength."""
    from retinopathy.data.folds import training_table
    from retinopathy.plots import figure, save_figure
    from retinopathy.training.dataloaders import build_dataloaders

    fig, axes = figure(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    table = training_table(experiment).head(n * 4)
    for row, (label, changes) in enumerate([("none", {"augment": False}), ("per item", {"augment_on": "item"}),
                                            ("per batch", {"augment_on": "batch"})]):
        variant = type(experiment)(experiment.config.replace(num_workers=0, batch_size=n, balance="none",
                                                             **changes), experiment.paths)
        dl = build_dataloaders(table, variant, 0).train.new(shuffle=False)
        images = dl.decode(dl.one_batch())[0]  # back to 0-255 pixels
        for col in range(min(n, len(images))):
            axes[row, col].imshow(images[col].permute(1, 2, 0).cpu().numpy().astype("uint8"))
            axes[row, col].axis("off")
        axes[row, 0].set_title(label, fontsize=9, loc="left")
    return save_figure(fig, path, dpi=90, bbox_inches="tight")


def main() -> None:
    global OUT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["demo", "aptos_cpu"])
    p.add_argument("--raw-dir", type=Path, help="data for configs that do not synthesize their own "
                                                "(default: ../shared/data/aptos2019-224)")
    p.add_argument("--steps", type=int, default=40, help="batches timed in each measurement (default 40)")
    p.add_argument("--workers", type=int, nargs="+", help="loader worker counts (default 0..cores)")
    p.add_argument("--compile", action="store_true", help="also time the network alone under torch.compile")
    p.add_argument("--out", type=Path, default=OUT, help=f"where data and models go (default {OUT})")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    OUT = args.out
    import torch

    from retinopathy.config import load_config

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    workers = args.workers or list(range(0, (os.cpu_count() or 1) + 1))
    print(f"device: {device}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    ratios = []
    for name in args.configs:
        raw = None if load_config(name).synthetic_images else (args.raw_dir or APTOS)
        experiment = experiment_for(name, raw, args.overrides)
        c = experiment.config
        print(f"\n{name}: {c.arch} {c.image_size} px, batch {c.batch_size}, head {c.head}, augment {c.augment}")
        for w in workers:
            print(f"  loader, {w} worker(s): {loader_rate(experiment, w, args.steps):8.1f} images/s", flush=True)
        model, how = model_rate(experiment, args.steps)
        print(f"  model alone ({how}): {model:8.1f} images/s", flush=True)
        if not torch.cuda.is_available() and how.startswith("float32"):
            other, how2 = model_rate(experiment, args.steps, channels_last="contiguous" in how)
            print(f"  model alone ({how2}): {other:8.1f} images/s ({other / model:.2f}x)", flush=True)
        if args.compile:
            fast, how3 = model_rate(experiment, args.steps, channels_last="channels-last" in how, compiled=True)
            print(f"  model alone ({how3}): {fast:8.1f} images/s ({fast / model:.2f}x)", flush=True)
        train = training_rate(experiment, args.steps)
        print(f"  training steps: {train:8.1f} images/s", flush=True)
        if c.augment:
            grid = save_augmentation_samples(experiment, OUT / f"augmentation-{Path(name).stem}.png")
            print(f"  augmentation samples (none / per item / per batch): {grid}")
        ratios.append(f"throughput ratio (training / model alone): {name} {train / model:.2f}")
    print()
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
