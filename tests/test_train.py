"""One epoch at 32 px on the tiny synthetic competition for each head and imbalance mode."""

import numpy as np
import pandas as pd
import pytest

from retinopathy.config import load_config
from retinopathy.experiment import Experiment
from retinopathy.folds import make_folds
from retinopathy.paths import Paths
from retinopathy.pipeline import preprocess
from retinopathy.train import class_weights, parse_fold_spec, quadratic_kappa, to_grades, train_fold
from retinopathy.errors import UserError

from conftest import REPO

TINY = ["n_folds=2", "epochs=1", "image_size=32", "batch_size=16", "num_workers=0"]


@pytest.mark.parametrize("head, balance", [("regression", "loss"), ("regression", "sampler"),
                                           ("classification", "loss"), ("classification", "none")])
def test_one_epoch(tiny_aptos, tmp_path, head, balance):
    config = load_config(REPO / "configs" / "demo.yaml",
                         TINY + [f"raw_dir={tiny_aptos}", f"head={head}", f"balance={balance}", "name=t"])
    experiment = Experiment(config, Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment)
    make_folds(experiment, verbose=False)
    result = train_fold(experiment, 0, verbose=False)
    oof = pd.read_csv(result.dir / "oof.csv")
    assert len(oof) == 20 and oof["pred"].between(0, 4).all()
    assert ("value" in oof) == (head == "regression") and ("prob_0" in oof) == (head == "classification")
    assert -1 <= result.qwk <= 1 and (result.dir / "export.pkl").is_file()


def test_class_weights_interpolate_from_natural_to_uniform():
    grades = np.array([0] * 70 + [1] * 20 + [2] * 10)
    assert np.allclose(class_weights(grades, 0.0)[:3], 1.0)
    uniform = class_weights(grades, 1.0)
    per_class_mass = np.bincount(grades) * uniform[:3]
    assert np.allclose(per_class_mass, per_class_mass[0]), "alpha=1: every grade weighs the same in total"
    half = class_weights(grades, 0.5)
    assert uniform[2] > half[2] > 1.0 > half[0]


def test_grades_from_outputs_and_kappa():
    assert to_grades(np.array([[0.1, 0.7, 0.1, 0.05, 0.05]])).tolist() == [1]
    assert to_grades(np.array([-0.2, 0.49, 0.5, 2.6, 9.0])).tolist() == [0, 0, 1, 3, 4]
    y = np.array([0, 1, 2, 3, 4, 0, 2])
    assert quadratic_kappa(np.eye(5)[y], y) == pytest.approx(1.0)
    assert quadratic_kappa(np.eye(5)[4 - y], y) < 0


def test_fold_spec():
    assert parse_fold_spec("all", 3) == [0, 1, 2] and parse_fold_spec("0,2", 3) == [0, 2]
    with pytest.raises(UserError, match="folds go 0..2"):
        parse_fold_spec("3", 3)
    with pytest.raises(UserError, match="a fold number"):
        parse_fold_spec("first", 3)
