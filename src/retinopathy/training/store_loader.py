"""Batches gathered from the packed image store (``loader=store``): a batch is one gather of uint8 rows into
(pinned, on a GPU box) memory, one host-to-device copy, then fastai's batch transforms on the device (to float,
augmentation, normalisation). A thread gathers the next batch while the device works on this one; there is no
per-image Python and no worker process to restart each epoch.

Everything else is fastai's: shuffling and its generator (so the epoch seeding that makes a resumed run exact
applies unchanged), the weighted sampler's draw, the distributed wrapper that shards each epoch's indices across
processes (it hands this loader's ``create_batches`` its share)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
from fastai.data.core import TfmdDL

from ..preprocessing.store import ImageStore


class StoreRows:
    """One split's rows as a dataset: the table (``items``: id, path, grade, …), each image's store and row there,
    and the targets. Pickles without its memory maps."""

    def __init__(self, items: pd.DataFrame, stores: list[ImageStore], where: np.ndarray, targets: np.ndarray,
                 categorical: bool, split_idx: int = 0):
        self.items, self.stores, self.where = items.reset_index(drop=True), stores, where
        # fastai's random transforms run where the split is 0 (training) and pass the others through
        self.targets, self.categorical, self.split_idx = targets, categorical, split_idx

    @classmethod
    def of(cls, items: pd.DataFrame, stores: list[ImageStore], categorical: bool, split_idx: int = 0) -> StoreRows:
        """Rows of ``items``, each found in the first of ``stores`` that holds it."""
        where = np.zeros((len(items), 2), np.int64)
        for i, path in enumerate(items["path"].astype(str)):
            s = next((s for s, store in enumerate(stores) if path in store.rows), None)
            if s is None:
                stores[0].row_of(path)  # one line naming the image and the store
            where[i] = s, stores[s].rows[path]
        targets = items["target"].to_numpy(np.int64 if categorical else np.float32)
        return cls(items, list(stores), where, targets, categorical, split_idx)

    def __len__(self) -> int:
        return len(self.items)

    def new_empty(self) -> StoreRows:
        """The same split with no rows (what fastai keeps in an exported learner)."""
        return StoreRows(self.items.iloc[:0], [], self.where[:0], self.targets[:0], self.categorical,
                         self.split_idx)

    def gather(self, idx: np.ndarray, pin: bool = False) -> tuple:
        """The batch of rows ``idx``: a ``TensorImage`` of uint8 (N, 3, H, W) laid out channels-last (the
        store's own order, which a channels-last model wants), and the targets."""
        from fastai.torch_core import TensorCategory, TensorImage

        idx = np.asarray(idx, np.int64)
        h, w = self.stores[0].shape[1:3]
        pixels = torch.empty((len(idx), h, w, 3), dtype=torch.uint8, pin_memory=pin)
        out = pixels.numpy()
        where = self.where[idx]
        for s, store in enumerate(self.stores):
            mine = np.flatnonzero(where[:, 0] == s)
            if len(mine) == len(idx):
                store.read_rows(where[:, 1], out)
            elif len(mine):
                part = np.empty((len(mine), h, w, 3), np.uint8)
                out[mine] = store.read_rows(where[mine, 1], part)
        x = TensorImage(pixels.permute(0, 3, 1, 2))
        y = torch.from_numpy(self.targets[idx])
        return x, (TensorCategory(y) if self.categorical else y)


class StoreDL(TfmdDL):
    """fastai's ``TfmdDL`` over :class:`StoreRows`: ``create_batches`` gathers whole batches (the next one on a
    thread) instead of collating items; ``wgts`` draws the training order as fastai's ``WeightedDL`` does."""

    def __init__(self, dataset=None, bs: int = 64, wgts=None, **kwargs):
        self.wgts = None if wgts is None else np.asarray(wgts, float) / np.sum(wgts)
        # the prefetching thread does the work; batches are gathered by index
        kwargs.update(num_workers=0, indexed=True)
        super().__init__(dataset, bs=bs, **kwargs)

    def get_idxs(self):
        """The epoch's order: fastai's shuffle, or the weighted draw."""
        if self.wgts is None or not self.shuffle or self.n == 0:
            return super().get_idxs()
        return list(np.random.choice(self.n, self.n, p=self.wgts))  # WeightedDL's draw, from the same generator

    def create_batches(self, samps):
        """Whole batches of the indices ``samps``, each gathered on a thread while the previous one is used."""
        from fastcore.basics import chunked

        pin = self.device is not None and torch.device(self.device).type == "cuda"
        with ThreadPoolExecutor(1) as pool:
            pending = None
            for batch in chunked(samps, self.bs, self.drop_last):
                future = pool.submit(self.dataset.gather, np.asarray(batch), pin)
                if pending is not None:
                    yield pending.result()
                pending = future
            if pending is not None:
                yield pending.result()

    def _one_pass(self):
        from fastai.torch_core import explode_types, to_device

        b = self.dataset.gather(np.zeros(1, np.int64)) if len(self.dataset) else None
        if b is None:
            return
        if self.device is not None:
            b = to_device(b, self.device)
        its = self.after_batch(b)
        self._n_inp, self._types = 1, explode_types(its)

    def new(self, dataset=None, cls=None, **kwargs):
        """A loader like this one (fastai's ``new``), unweighted unless told."""
        kwargs.setdefault("wgts", None)
        return super().new(dataset, cls, **kwargs)


def store_dataloaders(table: pd.DataFrame, valid_idx: np.ndarray, stores: list, categorical: bool, bs: int,
                      after_batch: list, wgts=None, vocab=None):
    """fastai ``DataLoaders`` (train shuffled, its last short batch dropped, drawn by ``wgts`` where given; valid
    in order) over the store; ``wgts`` is per row of ``table``."""
    from fastai.data.core import DataLoaders
    from fastai.data.transforms import IntToFloatTensor
    from fastai.torch_core import default_device

    train_idx = np.setdiff1d(np.arange(len(table)), valid_idx)
    device = default_device()
    tfms = [IntToFloatTensor(), *after_batch]
    train = StoreDL(StoreRows.of(table.iloc[train_idx], stores, categorical), bs=bs, shuffle=True, drop_last=True,
                    after_batch=tfms, device=device, wgts=None if wgts is None else np.asarray(wgts)[train_idx])
    # made from the training loader as fastai makes it (its one trial batch included), so both loaders draw the
    # same random numbers and a run trains as it would over the PNGs
    valid = train.new(StoreRows.of(table.iloc[valid_idx], stores, categorical, split_idx=1), shuffle=False,
                      drop_last=False)
    dls = DataLoaders(train, valid, device=device)
    if vocab is not None:
        for dl in (train, valid):
            dl.vocab = vocab
    dls.c = len(vocab) if vocab is not None else 1
    return dls
