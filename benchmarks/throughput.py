"""Training throughput, side by side in one run, for each config on this machine's device:

  loader        the training DataLoader alone, host side (what the host must deliver to the device), images/s:
                from the PNGs (decode, per-item transforms, collate) for 0..N workers, and from the packed store
                (a gather of uint8 rows); the device transforms (to float, batch augmentation, normalisation)
                are timed alone beside them
  model         the network alone: forward + backward + optimizer step on random tensors of the batch's shape, with
                the config's precision and memory format (and float32 channels-last beside it on a CPU)
  training      real training steps (fastai's fit on the fold's images) from the PNGs and from the store

and last, the ratio lines: ``store / png loader ratio at <size> px: X.XX`` and, per loader,
``throughput ratio (training / model alone): <config> loader=<png|store> X.XX``. A ratio near 1 means the loader
keeps up and training runs at the network's own speed; well below it, the loader is the bottleneck. Without a GPU,
a labelled estimate of the ratio on one. ``--eyepacs-scale`` packs an EyePACS-sized set and times one epoch's
loader pass from disk, and projects a fold's wall time.

  python benchmarks/throughput.py                                  # demo and aptos_cpu (on ../shared's APTOS)
  python benchmarks/throughput.py --configs debug --steps 4        # what the tests run
  python benchmarks/throughput.py --configs aptos_gpu --synthetic 400 --train-steps 4 --eyepacs-scale  # 384 px
  python benchmarks/throughput.py --configs aptos_gpu --raw-dir /data/aptos2019   # on a GPU box
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import pandas as pd

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


def with_loader(experiment, loader: str, **changes):
    """The experiment read through ``loader`` (png or store; the store augments per batch, on the device)."""
    if loader == "store":
        changes = {"augment_on": "batch", **changes}
    config = experiment.config.replace(loader=loader, **changes)
    return type(experiment)(config, experiment.paths)


@contextlib.contextmanager
def host_side_only(dl):
    """The loader without its device transforms (to float, batch augmentation, normalisation): what the host must
    deliver. Yields those transforms."""
    device_tfms = dl.after_batch
    dl.after_batch = type(device_tfms)([])  # an empty Pipeline (fastcore's or fasttransform's, whichever fastai has)
    try:
        yield device_tfms
    finally:
        dl.after_batch = device_tfms


def _synchronize():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def loader_rate(experiment, workers: int, batches: int, loader: str = "png", cached: bool = False) -> float:
    """Images per second of the training DataLoader alone, host side: decoding (PNG) or gathering (store), the
    per-item transforms, batching and the copy to the device; its device transforms are timed apart. ``cached``:
    the PNG loader serves images it decoded once from memory, as it does for a set under its cache's size
    (otherwise it decodes every image every epoch, as for EyePACS at 384 px)."""
    from retinopathy.data.folds import training_table
    from retinopathy.training import dataloaders

    experiment = with_loader(experiment, loader, num_workers=workers)
    cache = dataloaders.CACHE_BYTES
    dataloaders.CACHE_BYTES = cache if cached else 0
    try:
        dl = dataloaders.build_dataloaders(training_table(experiment), experiment, 0).train
    finally:
        dataloaders.CACHE_BYTES = cache
    seen, elapsed, done = 0, 0.0, 0
    with host_side_only(dl):
        while done < batches:
            last = None  # each pass's first batch pays for starting the workers: not counted
            for x, _ in dl:
                _synchronize()
                now = time.perf_counter()
                if last is not None:
                    seen, elapsed, done = seen + len(x), elapsed + now - last, done + 1
                last = now
                if done >= batches:
                    break
    return seen / elapsed


def device_transform_rate(experiment, batches: int) -> float:
    """Images per second of the store loader's device transforms alone (to float, augmentation, normalisation) on
    a batch already on the device."""
    from retinopathy.data.folds import training_table
    from retinopathy.training.dataloaders import build_dataloaders

    experiment = with_loader(experiment, "store")
    dl = build_dataloaders(training_table(experiment), experiment, 0).train
    with host_side_only(dl) as device_tfms:
        x, y = next(iter(dl))
    device_tfms.split_idx = 0  # training: the random transforms run
    device_tfms((x, y))
    _synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        device_tfms((x, y))
    _synchronize()
    return batches * len(x) / (time.perf_counter() - start)


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

    rows = [("none", {"augment": False, "loader": "png"}), ("per item", {"augment_on": "item", "loader": "png"}),
            ("per batch, png", {"augment_on": "batch", "loader": "png"}),
            ("per batch, store", {"augment_on": "batch", "loader": "store"})]
    fig, axes = figure(len(rows), n, figsize=(1.6 * n, 1.75 * len(rows)), squeeze=False)
    table = training_table(experiment).head(n * 4)
    for row, (label, changes) in enumerate(rows):
        variant = type(experiment)(experiment.config.replace(num_workers=0, batch_size=n, balance="none",
                                                             **changes), experiment.paths)
        dl = build_dataloaders(table, variant, 0).train.new(shuffle=False)
        images = dl.decode(dl.one_batch())[0]  # back to 0-255 pixels
        for col in range(min(n, len(images))):
            axes[row, col].imshow(images[col].permute(1, 2, 0).cpu().numpy().astype("uint8"))
            axes[row, col].axis("off")
        axes[row, 0].set_title(label, fontsize=9, loc="left")
    return save_figure(fig, path, dpi=90, bbox_inches="tight")


def dataloaders_cache_gb() -> float:
    from retinopathy.training.dataloaders import CACHE_BYTES
    return CACHE_BYTES / 1024**3


#: EyePACS 2015's labelled training photographs
EYEPACS_TRAIN = 35_126


def eyepacs_scale(size: int, batch: int, n: int = EYEPACS_TRAIN, distinct: int = 64, keep: bool = False) -> dict:
    """An EyePACS-sized training set at ``size`` px packed, then one training epoch's loader pass from disk: the
    prepared images are ``distinct`` synthetic photographs preprocessed once, each linked under many ids (the pack
    decodes every one of the ``n`` files, as it would real ones); the store leaves the page cache before the pass,
    so its reads come from the disk. Returns the figures."""
    from retinopathy.data.synthetic import make_competition
    from retinopathy.preprocessing.stage import preprocess_dataset
    from retinopathy.preprocessing.store import ImageStore, StoreFiles, pack_store, store_bytes
    from retinopathy.training.store_loader import StoreDL, StoreRows

    work = OUT / f"eyepacs-scale-{size}"
    raw = make_competition(OUT / "eyepacs-scale-raw", "eyepacs2015", n_train=distinct, n_test=0, seed=3,
                           max_side=1024, progress=False) if not (OUT / "eyepacs-scale-raw").is_dir() \
        else OUT / "eyepacs-scale-raw"
    base = preprocess_dataset(raw, OUT / f"eyepacs-scale-base-{size}", "ben", size, progress=False,
                              splits=("train",))
    folder = work / "processed"
    folder.mkdir(parents=True, exist_ok=True)
    sources = base["path"].tolist()
    rows = []
    for i in range(n):
        link = folder / f"{i}_{'left' if i % 2 else 'right'}.png"
        if not link.exists():
            os.link(sources[i % len(sources)], link)
        rows.append({"id": link.stem, "split": "train", "path": str(link)})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(folder / "manifest.csv", index=False)
    start = time.perf_counter()
    pack_store(folder, size, manifest=manifest, progress=False)
    packed = time.perf_counter() - start
    with open(StoreFiles(folder).store, "rb") as handle:  # out of the page cache: the pass reads the disk
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    store = ImageStore.open(folder)
    train = manifest.iloc[: n * 4 // 5].assign(target=0)  # one fold's training part of five
    dl = StoreDL(StoreRows.of(train, [store], categorical=False), bs=batch, shuffle=True,
                 drop_last=True, device="cpu")
    start, seen = time.perf_counter(), 0
    for x, _ in dl:
        seen += len(x)
    epoch = time.perf_counter() - start
    figures = {"images": n, "size": size, "gb": store_bytes(n, size) / 1e9, "pack_s": packed, "epoch_images": seen,
               "epoch_s": epoch, "rate": seen / epoch}
    if not keep:
        StoreFiles(folder).store.unlink()
    return figures


def main() -> None:
    global OUT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["demo", "aptos_cpu"])
    p.add_argument("--raw-dir", type=Path, help="data for configs that do not synthesize their own "
                                                "(default: ../shared/data/aptos2019-224)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="N synthetic photographs instead of the real data, for every config")
    p.add_argument("--steps", type=int, default=40, help="batches timed in each measurement (default 40)")
    p.add_argument("--train-steps", type=int, help="batches timed for the network alone and the training steps "
                                                   "(default: --steps)")
    p.add_argument("--workers", type=int, nargs="+", help="PNG loader worker counts (default 0..cores)")
    p.add_argument("--compile", action="store_true", help="also time the network alone under torch.compile")
    p.add_argument("--eyepacs-scale", action="store_true",
                   help=f"also pack an EyePACS-sized set ({EYEPACS_TRAIN:,} images at the last config's size, "
                        "about 15.5 GB at 384 px) and time one epoch's loader pass from disk")
    p.add_argument("--gpu-model-rate", type=float, default=1190.0, metavar="IMAGES_PER_S",
                   help="the network alone on the GPU the projection is for (default 1190: EfficientNet-Lite0 at "
                        "384 px, batch 32, float16 on an H100, benchmarks/README.md)")
    p.add_argument("--out", type=Path, default=OUT, help=f"where data and models go (default {OUT})")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    OUT = args.out
    train_steps = args.train_steps or args.steps
    import torch

    from retinopathy.config import load_config

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU, {os.cpu_count()} cores"
    workers = args.workers or list(range(0, (os.cpu_count() or 1) + 1))
    print(f"device: {device}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    ratios = []
    for name in args.configs:
        synthetic = [f"synthetic_images={args.synthetic}"] if args.synthetic else []
        raw = None if args.synthetic or load_config(name).synthetic_images else (args.raw_dir or APTOS)
        experiment = experiment_for(name, raw, [*synthetic, *args.overrides])
        c = experiment.config
        print(f"\n{name}: {c.arch} {c.image_size} px, batch {c.batch_size}, head {c.head}, augment {c.augment} "
              f"({c.augment_on}), {len(pd.read_csv(experiment.folds_csv))} training images")
        png_rates = []
        for w in workers:
            png_rates.append(loader_rate(experiment, w, args.steps))
            print(f"  loader from png, {w} worker(s): {png_rates[-1]:8.1f} images/s", flush=True)
        cached = loader_rate(experiment, 0, args.steps, cached=True)
        print(f"  loader from png, 0 workers, decoded once and kept in memory: {cached:8.1f} images/s", flush=True)
        store = loader_rate(experiment, 0, args.steps, loader="store")
        print(f"  loader from store:{'':13}{store:8.1f} images/s", flush=True)
        device_tfms = device_transform_rate(experiment, args.steps)
        print(f"  device transforms alone (to float, augmentation, normalisation): {device_tfms:8.1f} images/s")
        model, how = model_rate(experiment, train_steps)
        print(f"  model alone ({how}): {model:8.1f} images/s", flush=True)
        if not cuda and how.startswith("float32"):
            other, how2 = model_rate(experiment, train_steps, channels_last="contiguous" in how)
            print(f"  model alone ({how2}): {other:8.1f} images/s ({other / model:.2f}x)", flush=True)
        if args.compile:
            fast, how3 = model_rate(experiment, train_steps, channels_last="channels-last" in how, compiled=True)
            print(f"  model alone ({how3}): {fast:8.1f} images/s ({fast / model:.2f}x)", flush=True)
        trains = {}
        for loader in ("png", "store"):
            trains[loader] = training_rate(with_loader(experiment, loader), train_steps)
            print(f"  training steps from {loader}: {trains[loader]:8.1f} images/s", flush=True)
        if c.augment:
            grid = save_augmentation_samples(experiment, OUT / f"augmentation-{Path(name).stem}.png")
            print(f"  augmentation samples (none / per item / per batch from png / per batch from store): {grid}")
        ratios.append(f"store / png loader ratio at {c.image_size} px: {store / max(png_rates):.2f}")
        ratios.append(f"store / png loader ratio at {c.image_size} px, png decoded once and kept in memory (a set "
                      f"under {dataloaders_cache_gb():.0f} GB): {store / cached:.2f}")
        for loader, rate in trains.items():
            ratios.append(f"throughput ratio (training / model alone): {name} loader={loader} {rate / model:.2f}")
        if not cuda:
            # a GPU's step does not wait for a host that delivers faster than it computes; the device transforms
            # share the GPU (not measured here)
            estimate = min(1.0, store / args.gpu_model_rate)
            ratios.append(f"estimate, not measured: training / model alone on a GPU whose model alone runs "
                          f"{args.gpu_model_rate:.0f} images/s at {c.image_size} px, loader=store: at most "
                          f"{estimate:.2f} (this host's store loader, {store:.0f} images/s)")
    if args.eyepacs_scale:
        f = eyepacs_scale(c.image_size, c.batch_size)
        print(f"\nEyePACS scale: {f['images']:,} images at {f['size']} px packed ({f['gb']:.1f} GB) in "
              f"{f['pack_s']:.0f} s; one epoch's loader pass from disk, {f['epoch_images']:,} images: "
              f"{f['epoch_s']:.0f} s, {f['rate']:.0f} images/s")
        recipe = load_config("eyepacs_gpu")
        epochs = recipe.epochs + (recipe.freeze_epochs if recipe.starts_trained else 0)
        valid = f["images"] - f["epoch_images"]

        def fold_minutes(loader_rate: float) -> float:
            # validation runs forward only, about three times the training step's speed
            return epochs * (f["epoch_images"] / min(loader_rate, args.gpu_model_rate)
                             + valid / min(loader_rate, 3 * args.gpu_model_rate)) / 60

        ratios.append(f"projected eyepacs_gpu fold at {f['size']} px ({epochs} epochs, {f['epoch_images']:,} "
                      f"training images) on a GPU whose model alone runs {args.gpu_model_rate:.0f} images/s: "
                      f"{fold_minutes(f['rate']):.1f} min reading the disk every epoch as here ({f['rate']:.0f} "
                      f"images/s), {fold_minutes(store):.1f} min once the store sits in the page cache ({store:.0f} "
                      f"images/s; {f['gb']:.1f} GB of memory)")
    print()
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
