"""One epoch at 32 px on the tiny synthetic competition for each head and imbalance mode."""

import numpy as np
import pandas as pd
import pytest
import torch

from retinopathy.cli import parse_fold_spec
from retinopathy.config import load_config
from retinopathy.data.folds import make_folds
from retinopathy.errors import UserError
from retinopathy.experiment import Experiment
from retinopathy.metrics import GradeRule, quadratic_kappa
from retinopathy.paths import Paths
from retinopathy.preprocessing.stage import preprocess
from retinopathy.training.losses import class_weights
from retinopathy.training.models import output_kappa
from retinopathy.training.train import train_fold

from conftest import REPO, debug_config


@pytest.mark.parametrize("head, balance, loggers", [
    ("regression", "loss", "csv"), ("regression", "sampler", "csv"), ("classification", "loss", "csv"),
    ("classification", "none", "csv,tensorboard")])
def test_one_epoch(tiny_aptos, tmp_path, head, balance, loggers):
    config = debug_config(tiny_aptos, "t", f"head={head}", f"balance={balance}", f"loggers={loggers}")
    experiment = Experiment(config, Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment)
    make_folds(experiment, verbose=False)
    result = train_fold(experiment, 0, verbose=False)
    oof = pd.read_csv(result.dir / "oof.csv")
    assert len(oof) == 20 and oof["pred"].between(0, 4).all()
    assert ("value" in oof) == (head == "regression") and ("prob_0" in oof) == (head == "classification")
    assert result.qwk == pytest.approx(quadratic_kappa(oof["pred"], oof["grade"])), "the fold's score is its OOF QWK"
    assert (result.dir / "export.pkl").is_file()
    events = list((result.dir / "tensorboard").glob("events.out.tfevents.*"))
    assert bool(events) == ("tensorboard" in loggers), "TensorBoard's event files only when asked for"
    if events:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        scalars = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
        assert any("loss" in tag for tag in scalars), scalars


def test_an_unknown_logger_is_one_line(tiny_aptos):
    with pytest.raises(UserError, match="loggers: unknown 'tensorbord'; choose from csv, tensorboard, wandb, mlflow"):
        debug_config(tiny_aptos, "t", "loggers=csv,tensorbord")


def test_class_weights_interpolate_from_natural_to_uniform():
    grades = np.array([0] * 70 + [1] * 20 + [2] * 10)
    assert np.allclose(class_weights(grades, 0.0)[:3], 1.0)
    uniform = class_weights(grades, 1.0)
    per_class_mass = np.bincount(grades) * uniform[:3]
    assert np.allclose(per_class_mass, per_class_mass[0]), "alpha=1: every grade weighs the same in total"
    half = class_weights(grades, 0.5)
    assert uniform[2] > half[2] > 1.0 > half[0]


def test_grades_from_outputs_and_kappa():
    assert GradeRule.plain("classification")(np.array([[0.1, 0.7, 0.1, 0.05, 0.05]])).tolist() == [1]
    assert GradeRule.plain("regression")(np.array([-0.2, 0.49, 0.5, 2.6, 9.0])).tolist() == [0, 0, 1, 3, 4]
    y = np.array([0, 1, 2, 3, 4, 0, 2])
    logits = torch.as_tensor(np.eye(5)[y] * 5)
    assert output_kappa(logits, torch.as_tensor(y)) == pytest.approx(1.0)
    assert output_kappa(torch.as_tensor(np.eye(5)[4 - y] * 5), torch.as_tensor(y)) < 0
    steps = torch.as_tensor((y[:, None] >= np.arange(1, 5)[None]) * 10.0 - 5)  # ordinal logits of P(grade >= k)
    assert output_kappa(steps, torch.as_tensor(y), head="ordinal") == pytest.approx(1.0)
    assert quadratic_kappa(y, y) == pytest.approx(1.0) and quadratic_kappa(4 - y, y) < 0


def test_fold_spec():
    assert parse_fold_spec("all", 3) == [0, 1, 2] and parse_fold_spec("0,2", 3) == [0, 2]
    with pytest.raises(UserError, match="folds go 0..2"):
        parse_fold_spec("3", 3)
    with pytest.raises(UserError, match="a fold number"):
        parse_fold_spec("first", 3)


def _tiny_experiment(raw, tmp_path, *overrides):
    config = debug_config(raw, "t", *overrides)
    experiment = Experiment(config, Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment)
    make_folds(experiment, verbose=False)
    return experiment


@pytest.mark.parametrize("loader", ["png", "store"])
def test_resume_carries_on_from_the_last_epoch(tiny_aptos, tmp_path, loader):
    from fastai.callback.core import Callback

    class CtrlC(Callback):
        order = 100  # after the epoch's checkpoint, as a real Ctrl-C during the next epoch would be

        def after_epoch(self):
            if self.epoch == 0:
                raise KeyboardInterrupt

    class CountEpochs(Callback):
        def __init__(self):
            self.epochs = []

        def before_epoch(self):
            self.epochs.append(self.epoch)

    loading = [f"loader={loader}", *(["augment_on=batch"] if loader == "store" else [])]
    experiment = _tiny_experiment(tiny_aptos, tmp_path, "epochs=3", *loading)
    with pytest.raises(KeyboardInterrupt):
        train_fold(experiment, 0, verbose=False, callbacks=[CtrlC()])
    fold_dir = experiment.fold_dir(0)
    assert (fold_dir / "checkpoints" / "last.pth").is_file() and not (fold_dir / "export.pkl").exists()

    counter = CountEpochs()
    result = train_fold(experiment, 0, verbose=False, resume=True, callbacks=[counter])
    assert len(counter.epochs) == 2, "only the two unfinished epochs are trained again"
    history = pd.read_csv(result.dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3] and history["step"].tolist() == [1, 2, 3], "counted from 1"
    assert history["qwk"].notna().all()
    assert (result.dir / "export.pkl").is_file() and not (result.dir / "checkpoints").exists()

    # ... to exactly what an uninterrupted run gives: the same batches, augmentations and dropout in each epoch
    whole = train_fold(_tiny_experiment(tiny_aptos, tmp_path / "whole", "epochs=3", *loading), 0, verbose=False)
    uninterrupted = pd.read_csv(whole.dir / "history.csv")
    pd.testing.assert_frame_equal(history.drop(columns="time"), uninterrupted.drop(columns="time"))
    pd.testing.assert_frame_equal(pd.read_csv(result.dir / "oof.csv"), pd.read_csv(whole.dir / "oof.csv"))


def test_resume_ignores_a_checkpoint_from_another_config(tiny_aptos, tmp_path):
    from fastai.callback.core import Callback

    class CtrlC(Callback):
        order = 100

        def after_epoch(self):
            raise KeyboardInterrupt

    experiment = _tiny_experiment(tiny_aptos, tmp_path, "epochs=2")
    with pytest.raises(KeyboardInterrupt):
        train_fold(experiment, 0, verbose=False, callbacks=[CtrlC()])
    changed = Experiment(experiment.config.replace(lr=1e-2), experiment.paths)
    result = train_fold(changed, 0, verbose=False, resume=True)
    assert len(pd.read_csv(result.dir / "history.csv")) == 2, "a different config starts from scratch"


def test_lr_find_saves_its_plot_and_can_pick_the_rate(tiny_aptos, tmp_path):
    import json

    from PIL import Image
    experiment = _tiny_experiment(tiny_aptos, tmp_path, "lr_find=pick")
    result = train_fold(experiment, 0, verbose=False)
    with Image.open(result.dir / "lr_find.png") as plot:
        plot.verify()
    suggestion = json.loads((result.dir / "lr_find.json").read_text())["suggestion"]
    assert len(pd.read_csv(result.dir / "lr_find.csv")) > 10
    assert result.lr == pytest.approx(suggestion), "pick trains at the suggestion"
    assert suggestion != pytest.approx(experiment.config.lr)


def test_a_resumed_run_trains_at_the_rate_lr_find_picked(tiny_aptos, tmp_path):
    import json

    from fastai.callback.core import Callback

    class CtrlC(Callback):
        order = 100

        def after_epoch(self):
            raise KeyboardInterrupt

    class PeakRate(Callback):
        # the rates each batch trains at, once the scheduler has set them (fastai's fit first sets its default
        # rate, which no batch trains at)
        order = 70

        def before_fit(self):
            self.rates = []

        def before_batch(self):
            if self.training:
                self.rates += [h["lr"] for h in self.opt.hypers]

    experiment = _tiny_experiment(tiny_aptos, tmp_path, "lr_find=pick", "epochs=3")
    with pytest.raises(KeyboardInterrupt):
        train_fold(experiment, 0, verbose=False, callbacks=[CtrlC()])
    suggestion = json.loads((experiment.fold_dir(0) / "lr_find.json").read_text())["suggestion"]
    assert suggestion != pytest.approx(experiment.config.lr)
    peak = PeakRate()
    result = train_fold(experiment, 0, verbose=False, resume=True, callbacks=[peak])
    assert len(pd.read_csv(result.dir / "history.csv")) == 3, "resumed, not started again"
    assert result.lr == pytest.approx(suggestion), "the resumed epochs follow the picked rate's schedule"
    # the resumed fit's scheduler starts part-way through the picked rate's cycle, never the config's
    assert max(peak.rates) <= suggestion * 1.0001 and max(peak.rates) > suggestion / 25


def test_lr_find_plot_only_keeps_the_config_rate():
    from retinopathy.training.train import phases_of

    plot = load_config(REPO / "configs" / "debug.yaml", ["lr_find=plot", "lr=0.004"])
    assert plot.model_settings()["lr_find"] is False, "plotting changes nothing the model is trained with"
    assert [lr for *_, lr in phases_of(plot)] == [0.004]


def test_per_item_augmentation_follows_torchs_seed():
    """Loader workers are fresh copies of the transform every epoch, each seeded by torch: albumentations' own
    generators must follow that seed, or every epoch and every worker would replay the same draws."""
    import copy

    import torch
    from fastai.vision.all import PILImage

    from retinopathy.preprocessing.augment import AlbumentationsTransform

    image = PILImage.create(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    augment = AlbumentationsTransform()

    def draws(seed: int) -> list:  # in a worker: a copy of the transform, under torch's seed for that worker
        worker = copy.deepcopy(augment)
        torch.manual_seed(seed)
        return [worker(image, split_idx=0) for _ in range(3)]  # the training split's transform

    first, again, other = draws(1), draws(1), draws(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=False)), \
        "the same seed draws the same augmentations"
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=False)), "another worker's seed draws others"
    assert not torch.equal(first[0], first[1]), "and within one seed the draws go on"


def test_batch_augmentation_changes_training_batches_only(tiny_aptos, tmp_path):
    import torch

    from retinopathy.data.folds import training_table
    from retinopathy.training.dataloaders import build_dataloaders

    config = debug_config(tiny_aptos, "batch-aug", "augment_on=batch", "image_size=64", "balance=none")
    experiment = Experiment(config, Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment)
    make_folds(experiment, verbose=False)
    table = training_table(experiment)
    augmented = build_dataloaders(table, experiment, 0)
    plain = build_dataloaders(table, Experiment(config.replace(augment=False), experiment.paths), 0)
    assert not any(type(t).__name__ == "AlbumentationsTransform" for t in augmented.train.after_item.fs)
    xa, ya = augmented.train.new(shuffle=False).one_batch()
    xp, yp = plain.train.new(shuffle=False).one_batch()
    assert xa.shape == xp.shape and torch.equal(ya, yp), "same images and labels, in the same order"
    assert not torch.allclose(xa, xp), "training batches are augmented"
    norm = augmented.after_batch.fs[-1]
    low, high = ((0 - norm.mean) / norm.std).min(), ((1 - norm.mean) / norm.std).max()
    assert low - 1e-4 <= xa.min() and xa.max() <= high + 1e-4, "pixel values stay in range"
    va, vya = augmented.valid.one_batch()
    vp, vyp = plain.valid.one_batch()
    # untouched, up to the float round trip (logit / HSV and back, ~3e-5) of fastai's lighting transforms
    assert torch.allclose(va, vp, atol=1e-4) and torch.equal(vya, vyp), "validation batches are untouched"


def test_images_are_decoded_once_and_exports_carry_none(tiny_aptos, tmp_path, monkeypatch):
    import pickle

    import torch

    from retinopathy.data.folds import training_table
    from retinopathy.training import dataloaders

    config = debug_config(tiny_aptos, "cache", "augment=false", "balance=none")
    experiment = Experiment(config, Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment)
    make_folds(experiment, verbose=False)
    table = training_table(experiment)
    made, original = [], dataloaders.CachedImages
    monkeypatch.setattr(dataloaders, "CachedImages", type("Recorded", (original,), {
        "__init__": lambda self, *a: (original.__init__(self, *a), made.append(self))[0]}))
    cached = dataloaders.build_dataloaders(table, experiment, 0)
    assert set(made[0].images) == set(table["path"]), "every image decoded once, up front"
    monkeypatch.setattr(dataloaders, "CACHE_BYTES", 0)
    from_disk = dataloaders.build_dataloaders(table, experiment, 0)
    assert not made[1].images, "over the budget, images are read from disk"
    for a, b in ((cached.train, from_disk.train), (cached.valid, from_disk.valid)):
        (xa, ya), (xb, yb) = a.new(shuffle=False).one_batch(), b.new(shuffle=False).one_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb), "the cache serves exactly what the files hold"
    monkeypatch.undo()
    assert pickle.loads(pickle.dumps(original(table["path"], 32))).images == {}, \
        "an exported learner pickles no images"
