import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retinopathy.competitions import APTOS2019, EYEPACS2015, read_labels, read_test_ids
from retinopathy.data.synthetic import fundus_image, make_competition
from retinopathy.errors import UserError
from retinopathy.preprocessing.fundus import find_eye


def test_aptos_layout(tiny_aptos):
    for name in ("train.csv", "test.csv", "sample_submission.csv", "train_images", "test_images"):
        assert (tiny_aptos / name).exists(), name
    train = pd.read_csv(tiny_aptos / "train.csv", dtype=str)
    assert list(train.columns) == ["id_code", "diagnosis"]
    assert len(train) == 40 and train["id_code"].str.fullmatch(r"[0-9a-f]{12}").all()
    assert set(train["diagnosis"].astype(int)) <= {0, 1, 2, 3, 4}
    assert sorted(p.stem for p in (tiny_aptos / "train_images").glob("*.png")) == sorted(train["id_code"])
    test = pd.read_csv(tiny_aptos / "test.csv", dtype=str)
    sample = pd.read_csv(tiny_aptos / "sample_submission.csv", dtype=str)
    assert list(sample.columns) == ["id_code", "diagnosis"] and sample["id_code"].tolist() == test["id_code"].tolist()
    assert sorted(p.stem for p in (tiny_aptos / "test_images").glob("*.png")) == sorted(test["id_code"])
    assert not set(test["id_code"]) & set(train["id_code"])
    # Our own readers accept what the generator writes.
    assert len(read_labels(tiny_aptos, APTOS2019)) == 40 and len(read_test_ids(tiny_aptos, APTOS2019)) == 10


def test_eyepacs_layout(tiny_eyepacs):
    labels = pd.read_csv(tiny_eyepacs / "trainLabels.csv", dtype=str)
    assert list(labels.columns) == ["image", "level"]
    assert labels["image"].str.fullmatch(r"\d+_(left|right)").all()
    patients = labels["image"].str.split("_").str[0]
    assert (patients.value_counts() == 2).all(), "both eyes of every patient"
    assert sorted(p.stem for p in (tiny_eyepacs / "train").glob("*.jpeg")) == sorted(labels["image"])
    sample = pd.read_csv(tiny_eyepacs / "sampleSubmission.csv", dtype=str)
    assert list(sample.columns) == ["image", "level"] and len(sample) == 10
    assert not set(sample["image"].str.split("_").str[0]) & set(patients), "test patients are new patients"
    assert sorted(p.stem for p in (tiny_eyepacs / "test").glob("*.jpeg")) == sorted(sample["image"])
    assert not (tiny_eyepacs / "test.csv").exists()
    assert len(read_labels(tiny_eyepacs, EYEPACS2015)) == 30


def test_images_vary_in_size_and_look_like_fundus_photos(tiny_aptos):
    sizes = set()
    for path in sorted((tiny_aptos / "train_images").glob("*.png"))[:12]:
        img = np.asarray(Image.open(path).convert("RGB"))
        sizes.add(img.shape[:2])
        assert img[0, 0].max() < 15, "black surround in the corner"
        eye = find_eye(img)
        assert eye is not None and eye.radius > 0.3 * min(img.shape[:2])
        centre = img[int(eye.cy) - 3:int(eye.cy) + 3, int(eye.cx) - 3:int(eye.cx) + 3].reshape(-1, 3).mean(0)
        assert centre[0] > centre[2], "a reddish retina"
    assert len(sizes) >= 3, "several resolutions and aspect ratios"


def test_lesions_follow_the_grade():
    # The same seed draws the same eye whatever the grade, up to the lesions: pixels that differ by far more
    # than the camera noise are lesions.
    def lesion_pixels(grade, seed):
        healthy = fundus_image(0, np.random.default_rng(seed), 400, 300).astype(int)
        diseased = fundus_image(grade, np.random.default_rng(seed), 400, 300).astype(int)
        return int((np.abs(diseased - healthy).max(axis=2) > 40).sum())

    counts = [np.mean([lesion_pixels(g, seed) for seed in range(5)]) for g in range(5)]
    assert counts[0] == 0
    assert 0 < counts[1] < counts[2] < counts[3]
    assert counts[4] > counts[2]


def test_grades_are_imbalanced_like_the_real_sets(tmp_path):
    out = make_competition(tmp_path / "c", "aptos2019", n_train=150, n_test=5, seed=3, max_side=64, workers=1,
                           progress=False)
    grades = pd.read_csv(out / "train.csv")["diagnosis"].value_counts()
    assert set(grades.index) == {0, 1, 2, 3, 4}
    assert grades.idxmax() == 0 and grades[0] > 0.35 * 150 and grades[3] < grades[2]


def test_same_seed_same_competition_whatever_the_workers(tmp_path):
    a = make_competition(tmp_path / "a", "eyepacs2015", n_train=6, n_test=2, seed=5, max_side=96, workers=1,
                         progress=False)
    b = make_competition(tmp_path / "b", "eyepacs2015", n_train=6, n_test=2, seed=5, max_side=96, workers=2,
                         progress=False)
    assert (a / "trainLabels.csv").read_text() == (b / "trainLabels.csv").read_text()
    for path in (a / "train").glob("*.jpeg"):
        assert path.read_bytes() == (b / "train" / path.name).read_bytes()


def test_refuses_to_overwrite(tiny_aptos):
    with pytest.raises(UserError, match="already exists"):
        make_competition(tiny_aptos, "aptos2019", n_train=2, n_test=1)
