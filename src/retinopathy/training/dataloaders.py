"""fastai DataLoaders for one fold: preprocessed images in, the fold's rows validate, the rest train (with
per-item augmentation, and oversampling of rare grades when asked)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..device import cuda_available
from ..errors import UserError
from ..experiment import Experiment
from ..metrics import GRADES
from .losses import class_weights


def cores_per_fold(config) -> int:
    """The cores one fold's process may use: all of them, or an equal share with ``folds_at_once`` side by side."""
    return max(1, (os.cpu_count() or 1) // config.folds_at_once)


def num_workers(config) -> int:
    """The config's dataloader workers; -1: one per core (at most 8) on a GPU box, none on a CPU; with
    ``folds_at_once`` folds training side by side, its share of the cores less one for the fold's own process."""
    if config.num_workers >= 0:
        return config.num_workers
    # Cached PNGs at training size decode fast: on a CPU, extra worker processes only steal the model's cores.
    share = cores_per_fold(config) - (1 if config.folds_at_once > 1 else 0)
    return min(8, max(1, share)) if cuda_available() else 0


#: decoded training-size images kept in memory up to this many bytes (APTOS at 128 px: 144 MB; EyePACS at 384 px,
#: 15 GB, is read from disk each epoch as before)
CACHE_BYTES = 2 * 1024**3


class CachedImages:
    """``get_x`` for a table with a ``path`` column: the image decoded once and then served from memory, when the
    table's images fit in :data:`CACHE_BYTES`; otherwise (and in an exported learner, which pickles without its
    images) the path, decoded by fastai as usual. Decoding was a third of the demo loader's time per image."""

    def __init__(self, paths, image_size: int):
        from fastai.vision.all import PILImage

        paths = list(dict.fromkeys(paths))
        fits = len(paths) * image_size * image_size * 3 <= CACHE_BYTES
        # decoded as fastai decodes (RGB, uint8), so a cached image is the very array the file gives
        self.images = {p: np.asarray(PILImage.create(p)) for p in paths} if fits else {}

    def __call__(self, row):
        return self.images.get(row["path"], row["path"])

    def __getstate__(self):
        return {"images": {}}


def batch_augmentations() -> list:
    """The per-item augmentation's kind and strength as fastai batch transforms, run on the device (training
    batches only): flips both ways, any rotation and a zoom up to 1.1 as one affine warp per batch (zeros outside
    the eye), brightness and contrast ±15 %, a slight hue shift."""
    from fastai.vision.all import Hue, aug_transforms

    return [*aug_transforms(do_flip=True, flip_vert=True, max_rotate=180, min_zoom=0.95, max_zoom=1.1, max_warp=0,
                            max_lighting=0.15, p_affine=0.9, p_lighting=0.7, pad_mode="zeros"),
            Hue(max_hue=0.03, p=0.3)]


def build_dataloaders(table: pd.DataFrame, experiment: Experiment, fold: int):
    """fastai DataLoaders for one fold: the fold's rows validate, the rest train (oversampled if asked)."""
    from fastai.vision.all import (
        CategoryBlock,
        ColReader,
        DataBlock,
        ImageBlock,
        IndexSplitter,
        Normalize,
        RegressionBlock,
        imagenet_stats,
    )

    from ..preprocessing.augment import AlbumentationsTransform

    config = experiment.config
    valid_idx = np.flatnonzero(table["fold"].to_numpy() == fold)
    if len(valid_idx) == 0 or len(valid_idx) == len(table):
        raise UserError(f"fold {fold} is empty or holds every image: folds go 0..{table['fold'].max()}")
    # a classifier learns a category per image; the other heads learn the grade as a number (soft where a
    # pseudo-label gives one)
    categorical = experiment.head.categorical_targets
    table = table.assign(target=table["grade"] if categorical else table["grade"].astype(float))
    block = CategoryBlock(vocab=list(GRADES)) if categorical else RegressionBlock(n_out=1)
    # fastai adds the hub weights' own statistics; weights from a file or from scratch get the config's
    stats = imagenet_stats if config.normalize == "imagenet" else ([0.5] * 3, [0.5] * 3)
    batch_tfms = [] if config.hub_weights else [Normalize.from_stats(*stats)]
    item_tfms = [AlbumentationsTransform()] if config.augment and config.augment_on == "item" else []
    if config.augment and config.augment_on == "batch":
        batch_tfms = [*batch_augmentations(), *batch_tfms]
    # an extra labelled set's rows carry their sampling share; the competition's own rows weigh 1
    shares = table["share"].fillna(1.0).to_numpy(float) if "share" in table else np.ones(len(table))
    wgts = None
    if config.balance == "sampler":
        train_grades = np.rint(table["grade"].to_numpy(float)).astype(int)  # soft pseudo-labels: nearest grade
        wgts = class_weights(np.delete(train_grades, valid_idx), config.balance_alpha)[train_grades] * shares
    elif (shares != 1).any():
        wgts = shares
    if config.loader == "store":
        from .store_loader import store_dataloaders

        return store_dataloaders(table, valid_idx, stores_of(table, config.image_size), categorical,
                                 config.batch_size, batch_tfms, wgts=wgts,
                                 vocab=list(GRADES) if categorical else None)
    dblock = DataBlock(blocks=(ImageBlock, block), get_x=CachedImages(table["path"], config.image_size),
                       get_y=ColReader("target"),
                       splitter=IndexSplitter(valid_idx), item_tfms=item_tfms, batch_tfms=batch_tfms)
    common = dict(bs=config.batch_size, num_workers=num_workers(config), device=None)
    if wgts is not None:
        return dblock.weighted_dataloaders(table, wgts=wgts, **common)
    return dblock.dataloaders(table, **common)


def stores_of(table: pd.DataFrame, image_size: int) -> list:
    """The packed stores the table's images come from: each processed folder's (the competition's, an extra
    set's) training store, and its test store where pseudo-labelled test images train too; packed first where
    missing or stale."""
    from pathlib import Path

    from ..preprocessing.store import ensure_store

    stores = []
    paths = table["path"].astype(str)
    for folder, mine in paths.groupby(paths.map(lambda p: str(Path(p).parent))):
        train = ensure_store(folder, image_size, "train")
        stores.append(train)
        if not mine.isin(train.rows.keys()).all():
            stores.append(ensure_store(folder, image_size, "test"))
    return stores
