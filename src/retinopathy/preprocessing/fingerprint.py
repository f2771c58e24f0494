"""A photograph's perceptual hash, for finding copies of it: imagehash's pHash (the signs of the lowest 16 x 16
frequencies of a DCT: 256 bits) of the eye's square, so copies rescaled, recompressed or cropped differently hash
alike.

Fundus photographs look alike at low frequency (a lit disc on black), so the hash is taken of what tells two
retinas apart: the green channel (the vessels' contrast) of the square inside the disc (the rim and the frame's
cut are no part of the retina), lightly blurred (JPEG noise is no detail) and histogram-equalised (exposure is no
detail). On the 2,929 shared APTOS images, copies lie within 8 bits of each other (two cropped differently at 50)
and every other pair at least 64 apart (``benchmarks/duplicates.py``). imagehash rather than imagededup: the same
hashes with a handful of small dependencies, where imagededup brings TensorFlow or torch models and weights to
download; the grouping of hashes within a distance is a few lines of numpy and scipy.
"""

from __future__ import annotations

import cv2
import numpy as np

HASH_SIZE = 16  # 256 bits
_SIDE, _MARGIN = 128, 22  # the square inside the disc: 84 of the eye's 128 pixels


def photo_hash(square: np.ndarray) -> str:
    """The hash, as hex, of a photograph's eye square (:func:`~.fundus.eye_square`, at any size)."""
    import imagehash
    from PIL import Image

    green = cv2.resize(square[..., 1], (_SIDE, _SIDE), interpolation=cv2.INTER_AREA)
    inner = cv2.GaussianBlur(green[_MARGIN:_SIDE - _MARGIN, _MARGIN:_SIDE - _MARGIN], (0, 0), 1.5)
    return str(imagehash.phash(Image.fromarray(cv2.equalizeHist(inner)), HASH_SIZE))
