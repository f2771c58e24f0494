"""The packed image store and the loader that gathers batches from it."""

import errno
import json
import os
import random

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from retinopathy.data.folds import make_folds, training_table
from retinopathy.data.manifest import read_manifest_file
from retinopathy.errors import UserError
from retinopathy.experiment import Experiment
from retinopathy.paths import Paths
from retinopathy.preprocessing import store as store_module
from retinopathy.preprocessing.stage import preprocess
from retinopathy.preprocessing.store import ImageStore, StoreFiles, ensure_store, pack_store
from retinopathy.training.callbacks import gloo_safe_broadcast
from retinopathy.training.dataloaders import build_dataloaders
from retinopathy.training.train import train_fold

from conftest import debug_config


def _experiment(raw, tmp_path, name, *overrides):
    experiment = Experiment(debug_config(raw, name, "image_size=32", *overrides),
                            Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment)
    make_folds(experiment, verbose=False)
    return experiment


def _pngs(folder):
    manifest = read_manifest_file(folder)
    return manifest[manifest["path"] != ""]


def test_the_store_holds_exactly_the_pngs_pixels_and_is_packed_once(tiny_aptos, tmp_path):
    experiment = _experiment(tiny_aptos, tmp_path, "s", "loader=store", "augment_on=batch")
    folder = experiment.processed_dir
    store = ImageStore.open(folder)
    rows = _pngs(folder)
    train = rows[rows["split"] == "train"]
    assert store.shape == (len(train), 32, 32, 3) and len(train) == 40, "every training image, no test image"
    assert not StoreFiles(folder, "test").store.exists(), "test images only where pseudo-labels train on them"
    for path in train["path"].iloc[::7]:
        png = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        assert np.array_equal(store.images[store.row_of(path)], png)
    packed = StoreFiles(folder).store.stat().st_mtime_ns
    ensure_store(folder, 32, progress=False)
    assert StoreFiles(folder).store.stat().st_mtime_ns == packed, "a current store is not packed again"


def test_a_store_of_other_pngs_is_refused_then_packed_again(tiny_aptos, tmp_path):
    experiment = _experiment(tiny_aptos, tmp_path, "s", "loader=store", "augment_on=batch")
    folder = experiment.processed_dir
    path = _pngs(folder)["path"].iloc[3]
    repainted = np.full((32, 32, 3), 77, np.uint8)
    cv2.imwrite(path, repainted)  # the folder preprocessed again, say with another method
    with pytest.raises(UserError, match="packed from other images than the folder's manifest lists now"):
        ImageStore.open(folder)
    store = ensure_store(folder, 32, progress=False)
    assert np.array_equal(store.images[store.row_of(path)], repainted)


def test_an_interrupted_pack_resumes_to_the_same_store(tiny_aptos, tmp_path, monkeypatch):
    whole = _experiment(tiny_aptos, tmp_path / "whole", "s", "loader=store", "augment_on=batch")
    experiment = _experiment(tiny_aptos, tmp_path / "cut", "s")  # the PNGs only
    folder = experiment.processed_dir
    monkeypatch.setattr(store_module, "CHUNK", 8)
    decoded, real = [], store_module._decode

    def dies_at_the_20th(path, size):
        decoded.append(path)
        if len(decoded) == 20:
            raise KeyboardInterrupt  # a Ctrl-C (or a kill) mid-pack
        return real(path, size)

    monkeypatch.setattr(store_module, "_decode", dies_at_the_20th)
    with pytest.raises(KeyboardInterrupt):
        pack_store(folder, 32, workers=1, progress=False)
    files = StoreFiles(folder)
    assert not files.store.exists() and json.loads(files.partial_mark.read_text())["done"] == 16
    decoded.clear()
    monkeypatch.setattr(store_module, "_decode", lambda path, size: decoded.append(path) or real(path, size))
    pack_store(folder, 32, workers=1, progress=False)
    assert len(decoded) == 40 - 16, "the rows already on disk are not decoded again"
    assert not files.partial_mark.exists()
    assert np.array_equal(np.load(files.store), np.load(StoreFiles(whole.processed_dir).store))


def test_a_disk_too_small_for_the_store_is_one_line(tiny_aptos, tmp_path, monkeypatch):
    experiment = _experiment(tiny_aptos, tmp_path, "s")

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module.os, "posix_fallocate", no_space)
    with pytest.raises(UserError,
                       match=r"the image store needs 123\.0 kB and the disk has [\d.]+ [kMG]?B free .*loader=png"):
        pack_store(experiment.processed_dir, 32, progress=False)
    files = StoreFiles(experiment.processed_dir)
    assert not files.store.exists() and not files.mark.exists()


def test_per_item_augmentation_cannot_run_on_the_store(tiny_aptos):
    with pytest.raises(UserError, match="loader=store augments whole batches on the device: set augment_on=batch"):
        debug_config(tiny_aptos, "s", "loader=store", "augment_on=item", "augment=true")


@pytest.mark.parametrize("head, balance", [("classification", "none"), ("regression", "sampler")])
def test_training_from_the_store_is_training_from_the_pngs(tiny_aptos, tmp_path, head, balance):
    """Same batches, same order (the weighted draw too), same augmentation: the very same weights."""
    common = ["augment=true", "augment_on=batch", f"head={head}", f"balance={balance}", "batch_size=8"]
    weights, oofs = {}, {}
    for loader in ("png", "store"):
        experiment = _experiment(tiny_aptos, tmp_path / loader, "s", f"loader={loader}", *common)
        result = train_fold(experiment, 0, verbose=False)
        weights[loader] = torch.load(result.dir / "weights.pth", weights_only=True)
        oofs[loader] = pd.read_csv(result.dir / "oof.csv")
    assert all(torch.equal(weights["png"][k], weights["store"][k]) for k in weights["png"])
    pd.testing.assert_frame_equal(oofs["png"], oofs["store"])

    from retinopathy.experiment import load_learner_quietly
    learn = load_learner_quietly(result.dir / "export.pkl")  # a store-trained export loads without its store
    assert len(learn.dls.train.dataset) == 0


def test_the_validation_batches_are_the_pngs_and_training_batches_are_augmented(tiny_aptos, tmp_path):
    experiment = _experiment(tiny_aptos, tmp_path, "s", "loader=store", "augment=true", "augment_on=batch")
    dls = build_dataloaders(training_table(experiment), experiment, 0)
    png = Experiment(experiment.config.replace(loader="png"), experiment.paths)
    reference = build_dataloaders(training_table(png), png, 0)
    x, y = dls.valid.one_batch()
    x_png, y_png = reference.valid.one_batch()
    assert torch.equal(x, x_png) and torch.equal(y, y_png)
    raw, _ = dls.train.dataset.gather(np.arange(len(x)))
    plain = dls.train.after_batch.fs[0](raw)  # to float alone
    assert raw.dtype == torch.uint8 and not torch.allclose(next(iter(dls.train))[0][:4], plain[:4])


def test_the_distributed_wrapper_shards_each_epoch_across_processes(tiny_aptos, tmp_path):
    """fastai's DistributedDL hands each process its share of the epoch's order; the store gathers those rows."""
    import torch.distributed as dist
    from fastai.distributed import DistributedDL

    experiment = _experiment(tiny_aptos, tmp_path, "s", "loader=store", "augment_on=batch", "batch_size=4",
                             "balance=none")
    dl = build_dataloaders(training_table(experiment), experiment, 0).train
    seen = {}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        with gloo_safe_broadcast():  # the batch order goes round as a CPU tensor, as in CPU training
            for rank in (0, 1):
                shard = DistributedDL(dl, rank=rank, world_size=2)
                gathered, real = [], dl.dataset.gather
                dl.dataset.gather = (lambda idx, pin=False, seen=gathered, gather=real:
                                     seen.extend(idx.tolist()) or gather(idx, pin))
                dl.rng = random.Random(7)
                for _ in shard:
                    pass
                dl.dataset.gather = real
                seen[rank] = gathered
    finally:
        dist.destroy_process_group()
    share = -(-len(dl.dataset) // 2)
    assert len(seen[0]) == len(seen[1]) == share // 4 * 4, "each process its half, in whole batches"
    assert not set(seen[0]) & set(seen[1]), "no row gathered by both processes"


def test_an_extra_sets_images_come_from_its_own_store(tiny_aptos, tiny_eyepacs, tmp_path):
    from retinopathy.data.folds import extra_data_rows
    from retinopathy.preprocessing.image_io import read_prepared

    experiment = _experiment(tiny_aptos, tmp_path, "s", "loader=store", "augment_on=batch",
                             f"extra_data={tiny_eyepacs}*0.5")
    extra = extra_data_rows(experiment)
    table = pd.concat([training_table(experiment), extra.drop(columns=["source"])], ignore_index=True)
    dls = build_dataloaders(table, experiment, 0)
    rows = dls.train.dataset
    assert len(rows.stores) == 2 and set(rows.where[:, 0]) == {0, 1}, "two stores, both read"
    x, _ = rows.gather(np.arange(len(rows)))
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), read_prepared(rows.items["path"]))
    png = Experiment(experiment.config.replace(loader="png"), experiment.paths)
    assert np.allclose(dls.train.wgts, build_dataloaders(table, png, 0).train.wgts), "the same draw"


def test_pseudo_labelled_test_images_come_from_the_test_store(tiny_aptos, tmp_path):
    from retinopathy.training.dataloaders import stores_of
    from retinopathy.training.store_loader import StoreRows

    experiment = _experiment(tiny_aptos, tmp_path, "s", "loader=store", "augment_on=batch")
    rows = _pngs(experiment.processed_dir)
    test = rows[rows["split"] == "test"].head(3).assign(grade=2, fold=-1)
    table = pd.concat([training_table(experiment), test[["id", "path", "grade", "fold"]]], ignore_index=True)
    stores = stores_of(table, 32)
    assert [store.files.split for store in stores] == ["train", "test"]
    found = StoreRows.of(table.assign(target=table["grade"]), stores, categorical=True)
    assert (found.where[-3:, 0] == 1).all() and (found.where[:-3, 0] == 0).all()
    x, _ = found.gather(np.arange(len(table) - 3, len(table)))
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), np.stack([cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)
                                                                   for p in test["path"]]))


def test_a_shifted_index_is_refused_and_packed_again(tiny_aptos, tmp_path):
    experiment = _experiment(tiny_aptos, tmp_path, "s", "loader=store", "augment_on=batch")
    files = StoreFiles(experiment.processed_dir)
    index = pd.read_csv(files.index, dtype={"id": str})
    index["row"] = np.roll(index["row"].to_numpy(), 1)  # every image now points at its neighbour's pixels
    index.to_csv(files.index, index=False)
    with pytest.raises(UserError, match="index .* does not match the images it was packed from"):
        ImageStore.open(experiment.processed_dir)
    store = ensure_store(experiment.processed_dir, 32, progress=False)  # preprocess packs it again
    path = _pngs(experiment.processed_dir)["path"].iloc[5]
    assert np.array_equal(store.images[store.row_of(path)], cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB))


def test_a_raw_photo_replaced_in_place_is_prepared_and_packed_again(tiny_aptos, tmp_path):
    """The new PNG is keyed by its content: even with the old PNG's time forged back, the store is packed again."""
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(tiny_aptos, raw)
    experiment = _experiment(raw, tmp_path, "s", "loader=store", "augment_on=batch")
    folder = experiment.processed_dir
    rows = _pngs(folder)
    first, second = rows["id"].iloc[0], rows["id"].iloc[1]
    png = folder / f"{first}.png"
    before = os.stat(png)
    old_pixels = cv2.imread(str(png))
    photo = raw / "train_images" / f"{first}.png"
    photo.write_bytes((raw / "train_images" / f"{second}.png").read_bytes())  # replaced in place
    preprocess(experiment)
    assert not np.array_equal(cv2.imread(str(png)), old_pixels), "the replaced photograph is prepared again"
    os.utime(png, ns=(before.st_atime_ns, before.st_mtime_ns))
    store = ensure_store(folder, 32, progress=False)
    assert np.array_equal(store.images[store.row_of(str(png))], cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB))


def test_a_truncated_partial_store_is_packed_from_the_start(tiny_aptos, tmp_path, monkeypatch):
    experiment = _experiment(tiny_aptos, tmp_path, "s")
    folder = experiment.processed_dir
    monkeypatch.setattr(store_module, "CHUNK", 8)
    real_write = store_module.write_text
    calls = []

    def die_after_two_chunks(path, text):
        real_write(path, text)
        if "partial" in str(path):
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "write_text", die_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        pack_store(folder, 32, progress=False)
    monkeypatch.setattr(store_module, "write_text", real_write)
    files = StoreFiles(folder)
    with open(files.partial, "r+b") as f:  # the disk lost the file's tail
        f.truncate(files.partial.stat().st_size // 2)
    store = ensure_store(folder, 32, progress=False)
    rows = _pngs(folder)
    for path in rows[rows["split"] == "train"]["path"]:
        assert np.array_equal(store.images[store.row_of(path)], cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB))
