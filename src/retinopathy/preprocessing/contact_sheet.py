"""A before/after contact sheet of preprocessing, so a person can check the eye was found and cropped well."""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import UserError
from .fundus import METHODS, find_eye, prepare, resize_pad
from .image_io import decode_image


def contact_sheet(sources: list, methods: tuple[str, ...] = METHODS, size: int = 256,
                  labels: list[str] | None = None) -> np.ndarray:
    """A before/after grid: one row per image, the original (eye circle drawn in green) then each method."""
    rows = []
    for i, source in enumerate(sources):
        try:
            img, _ = decode_image(source, min_side=size)
        except Exception as e:  # noqa: BLE001 - a file that is no image, or a broken one: name it
            raise UserError(f"{source}: not an image that can be read ({type(e).__name__}): leave it out, or run "
                            "retinopathy verify on its folder") from None
        original = resize_pad(img, size)
        eye = find_eye(img)
        if eye is not None:  # draw the found circle where resize_pad put the image
            k = size / max(img.shape[:2])
            dx, dy = (size - round(img.shape[1] * k)) // 2, (size - round(img.shape[0] * k)) // 2
            cv2.circle(original, (int(eye.cx * k + dx), int(eye.cy * k + dy)), int(eye.radius * k), (0, 255, 0), 2)
        tiles = [original] + [prepare(img, m, size)[0] for m in methods]
        row = np.hstack([np.pad(t, ((4, 4), (4, 4), (0, 0)), constant_values=255) for t in tiles])
        if labels:
            cv2.putText(row, labels[i], (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
        rows.append(row)
    header = np.full((30, rows[0].shape[1], 3), 255, np.uint8)
    for j, title in enumerate(("original",) + tuple(methods)):
        cv2.putText(header, title, (j * (size + 8) + 10, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    return np.vstack([header] + rows)
