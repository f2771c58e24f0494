"""Training-time augmentation with albumentations, inside the fastai pipeline.

A fundus photograph has no up or left: any flip and any rotation is a valid new photograph, and cameras differ in
exposure, contrast and tint. Scale changes stay small because the preprocessing fixed the eye's radius.
"""

from __future__ import annotations

import os

# albumentations checks PyPI for a newer release when it is imported; offline (a Kaggle kernel, a GPU box, CI) that
# is a delay and a warning. Only the training stage imports this module, and only this module imports it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2
import numpy as np
import torch
from fastai.vision.all import PILImage, TensorImage, Transform


def fundus_augmentations(seed: int | None = None) -> A.Compose:
    """Flips, any rotation, a small zoom, brightness, contrast and hue: what a fundus camera varies. ``seed`` makes
    the draws repeatable (albumentations otherwise seeds itself from the OS)."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(rotate=(-180, 180), scale=(0.95, 1.1), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.9),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.7),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=10, val_shift_limit=0, p=0.3),
    ], seed=seed)


class AlbumentationsTransform(Transform):
    """Apply an albumentations pipeline to training images only (``split_idx = 0``); the result is already the
    uint8 channels-first tensor fastai's ``ToTensor`` would make, skipping a round trip through PIL."""

    split_idx = 0
    order = 2  # after the image is loaded; fastai's ToTensor (order 5) leaves the tensor it returns alone

    def __init__(self, augmentations: A.Compose | None = None):
        super().__init__()
        self.augmentations = augmentations or fundus_augmentations()  # reseeded from torch's seed as it draws

    def encodes(self, img: PILImage) -> TensorImage:
        # albumentations draws from its own generators, which torch's seeding never touches: a loader worker (a fresh
        # copy of this transform every epoch) would replay the same draws each epoch, and every worker the same
        # ones. So the draws follow torch's seed, as fastai's own transforms do: each worker's, and in the training
        # process each epoch's (EpochSeed), which also makes a resumed run draw what an uninterrupted one drew.
        seed = torch.initial_seed()
        if getattr(self, "_seeded_from", None) != seed:
            self.augmentations.set_random_seed(seed % 2**32)
            self._seeded_from = seed
        augmented = np.ascontiguousarray(self.augmentations(image=np.array(img))["image"])  # a writable copy
        return TensorImage(torch.from_numpy(augmented).permute(2, 0, 1))
