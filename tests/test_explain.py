"""Grad-CAM heat maps mean something: a tiny model trained on synthetic photographs whose only lesions sit in the
top-right quadrant looks there; and the heat map works for torchvision and timm bodies, classifier and regression."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from retinopathy.data.manifest import read_manifest_file

from conftest import debug_config, tiny_pipeline

#: chance is a quarter of the mass in each quadrant; the lesions' quadrant must hold this much more
MARGIN = 0.10


def quadrant_competition(root: Path, n: int = 80, size: int = 128, seed: int = 0) -> Path:
    """An APTOS-layout competition: grade 4 images carry bright exudate-like spots in the top-right quadrant only,
    grade 0 images none; every image has the same disc and random dark vessels elsewhere."""
    rng = np.random.default_rng(seed)
    (root / "train_images").mkdir(parents=True)
    (root / "test_images").mkdir()
    rows = []
    for i in range(n):
        grade = 4 if i % 2 else 0
        im = Image.new("RGB", (size, size))
        draw = ImageDraw.Draw(im)
        draw.ellipse([2, 2, size - 3, size - 3], fill=(int(150 + rng.integers(-20, 20)), 60, 30))
        for _ in range(6 if grade else 0):
            x, y = rng.integers(size // 2 + 6, size - 18), rng.integers(12, size // 2 - 6)
            r = int(rng.integers(2, 5))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(250, 240, 120))
        for _ in range(4):
            draw.line([tuple(rng.integers(10, size - 10, 2)), tuple(rng.integers(10, size - 10, 2))],
                      fill=(110, 30, 20), width=2)
        im.save(root / "train_images" / f"q{i:04d}.png")
        rows.append((f"q{i:04d}", grade))
    pd.DataFrame(rows, columns=["id_code", "diagnosis"]).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id_code": []}).to_csv(root / "test.csv", index=False)
    return root


@pytest.mark.slow  # 4 epochs at 128 px
def test_heat_map_puts_its_mass_on_the_lesions_quadrant(tmp_path):
    from retinopathy.experiment import load_learner_quietly
    from retinopathy.inference.explain import heat_map, quadrant_mass
    from retinopathy.preprocessing.image_io import read_prepared
    from retinopathy.training.serving_model import serving_model

    raw = quadrant_competition(tmp_path / "quadrant")
    experiment, _ = tiny_pipeline(raw, tmp_path / "work", "quadrant", "arch=resnet18", "preprocess=none",
                                  "image_size=128",
                                  "augment=false", "balance=none", "head=classification", "lr=3e-3", "batch_size=8",
                                  "epochs=4", "mixed_precision=false", folds=[0])
    oof = pd.read_csv(experiment.fold_dir(0) / "oof.csv", dtype={"id": str})
    assert (oof["pred"] == oof["grade"]).mean() >= 0.75, "the model learnt the lesions (else its map means nothing)"
    model = serving_model(load_learner_quietly(experiment.fold_dir(0) / "export.pkl"), "classification")
    paths = read_manifest_file(experiment.processed_dir).set_index("id")["path"]
    sick = oof.loc[oof["grade"] == 4, "id"]
    masses = np.mean([quadrant_mass(heat_map([model], read_prepared([paths[i]])[0], 4)) for i in sick], axis=0)
    top_left, top_right, bottom_left, bottom_right = masses
    assert top_right == masses.max() and top_right >= 0.25 + MARGIN, f"quadrant masses {masses.round(3)}"


@pytest.mark.parametrize("arch, head", [("resnet18", "classification"), ("resnet10t", "regression")])
def test_heat_map_for_torchvision_and_timm_bodies(tiny_aptos, tmp_path, arch, head):
    import torch

    from retinopathy.data.folds import make_folds, training_table
    from retinopathy.experiment import Experiment
    from retinopathy.inference.explain import heat_map, last_conv_stage, overlay
    from retinopathy.paths import Paths
    from retinopathy.preprocessing.stage import preprocess
    from retinopathy.training.dataloaders import build_dataloaders
    from retinopathy.training.models import build_learner
    from retinopathy.training.serving_model import serving_model

    torch.manual_seed(0)  # an untrained body: its initialisation, not the tests run before, decides the map
    experiment = Experiment(debug_config(tiny_aptos, "cam", f"arch={arch}", f"head={head}", "image_size=64"),
                            Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment, workers=1)
    make_folds(experiment, verbose=False)
    learn = build_learner(build_dataloaders(training_table(experiment), experiment, 0), experiment, tmp_path)
    stage = last_conv_stage(learn.model)
    assert any(stage is m for m in learn.model[0].modules()), "a stage of the body, not of the head"
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    heat = heat_map([serving_model(learn, head)] * 2, image, grade=2)
    assert heat.shape == (64, 64) and heat.min() >= 0 and heat.max() <= 1 and heat.max() > 0
    drawn = overlay(image, heat)
    assert drawn.shape == (64, 64, 3) and drawn.dtype == np.uint8 and not np.array_equal(drawn, image)
