"""Gradability: every real photograph gradable, degraded copies of them and pictures that are no fundus
photograph at all not, each with its reason."""

import cv2
import numpy as np
import pytest

from retinopathy.preprocessing.image_io import decode_for_examining, examine_image
from retinopathy.preprocessing.quality import assess

from conftest import shared


def real_photographs():
    eyepacs = sorted((shared("eyepacs-sample") / "train").glob("*.jpeg"))
    aptos = sorted((shared("aptos2019-224") / "train_images").glob("*.png"))[::100]
    return [decode_for_examining(p, 32)[0] for p in eyepacs + aptos]


def test_real_photographs_are_all_gradable():
    photos = real_photographs()
    verdicts = [assess(p) for p in photos]
    assert len(photos) >= 30 and all(q.gradable for q in verdicts), [q for q in verdicts if not q.gradable]


def haze(photo: np.ndarray) -> np.ndarray:
    """The retina behind a dense cataract: its detail flattened to a twentieth, the black surround left as it was."""
    out = photo.astype(np.float32)
    lit = photo.max(axis=2) > 8
    mean = out[lit].mean(axis=0)
    out[lit] = (out[lit] - mean) * 0.05 + mean
    return out.astype(np.uint8)


def test_degraded_photographs_are_not_gradable_and_say_why():
    photos = real_photographs()[:12]
    degradations = {
        "out of focus": lambda p: cv2.GaussianBlur(p, (0, 0), p.shape[0] / 60),
        "under-exposed": lambda p: (p * 0.1).astype(np.uint8),
        "over-exposed": lambda p: np.clip(p.astype(np.float32) * 4 + 100, 0, 255).astype(np.uint8),
        "too little contrast": haze,
    }
    for reason, degrade in degradations.items():
        verdicts = [assess(degrade(p)).reason for p in photos]
        # benchmarks/quality.py: 97 % or more of each kind are caught (a blur that leaves a sharp full-resolution
        # photograph's detail at 256 px is no blur to the measurement)
        assert verdicts.count(reason) >= 10, f"{reason}: {verdicts}"


@pytest.mark.parametrize("picture, reason", [
    (np.zeros((1, 1, 3), np.uint8), "too small"),
    (np.zeros((300, 400, 3), np.uint8), "no eye found"),
    (np.full((300, 400, 3), 255, np.uint8), "no eye found"),
    (np.zeros((300, 400, 4), np.uint8), "no eye found"),  # fully transparent
    (np.dstack([np.tile(np.linspace(0, 255, 400), (300, 1))] * 3).astype(np.uint8), ""),  # a ramp: any reason
])
def test_pictures_that_are_no_fundus_photograph_are_not_gradable(picture, reason):
    examined = examine_image(picture, "ben", 32)
    assert not examined.quality.gradable and examined.quality.reason.startswith(reason), examined.quality
    assert examined.image.shape == (32, 32, 3), "it is still prepared (the kernel grades every row)"


def test_a_page_of_text_is_not_a_fundus_photograph():
    page = np.full((600, 800, 3), 235, np.uint8)
    for row in range(60, 560, 50):
        cv2.putText(page, "Lorem ipsum dolor sit amet", (30, row), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (20, 20, 20), 2)
    assert not assess(page).gradable
