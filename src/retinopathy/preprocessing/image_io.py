"""Images in and out: decoding a file or upload (at a reduced JPEG resolution where the model allows), examining it
(prepared for the network, its gradability, its perceptual hash), encoding a prepared image as PNG, and reading
prepared PNGs back."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from ..competitions import PHOTO_FORMATS
from ..errors import UserError
from . import quality
from .fingerprint import photo_hash
from .fundus import Eye, check_method, eye_square, find_eye, prepare_eye, to_rgb_uint8

_REDUCED = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


def reduction_factor(original: tuple[int, int], min_side: int | None) -> int:
    """The largest JPEG decode reduction (8, 4, 2, else 1) that keeps the smaller side at least ``min_side``."""
    return next((f for f in _REDUCED if min_side and min(original) >= f * min_side), 1)


def decode_image(source: str | os.PathLike | bytes, min_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a file or bytes to RGB uint8, at a reduced resolution when ``min_side`` allows; also return the
    original (width, height).

    JPEGs are decoded by libjpeg at 1/2, 1/4 or 1/8 scale (OpenCV's ``IMREAD_REDUCED_COLOR_*``) while the smaller
    side stays at least ``min_side``: a 3888×2592 photo for a 512 px model decodes at a fraction of the full cost.
    Other formats (PNG, 16-bit, grayscale, RGBA, palette) go through PIL. Anything that is not a complete image
    raises.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=PHOTO_FORMATS) as im:
        # The camera's EXIF orientation is applied on both paths (OpenCV's reduced decode applies it itself), so a
        # photograph is upright whatever size it is decoded at; sizes are reported upright too.
        turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        original, fmt = (im.size[::-1] if turned else im.size), im.format
        factor = reduction_factor(original, min_side)
        if fmt == "JPEG" and factor > 1:
            buf = np.frombuffer(source if isinstance(source, bytes) else Path(source).read_bytes(), np.uint8)
            bgr = cv2.imdecode(buf, _REDUCED[factor])
            if bgr is not None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), original
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return to_rgb_uint8(np.clip(np.asarray(im) / 257.0, 0, 255).astype(np.uint8)), original
        if im.mode not in ("RGB", "L", "RGBA"):
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        return to_rgb_uint8(np.asarray(im)), original


@dataclass(frozen=True)
class Examined:
    """One photograph as every stage sees it: prepared for the network, the eye found (in the original
    photograph's coordinates), whether it can be graded, and its perceptual hash ('' without an eye)."""

    image: np.ndarray
    eye: Eye | None
    original: tuple[int, int]
    quality: quality.Quality
    phash: str


def examine_image(img: np.ndarray, method: str, size: int, original: tuple[int, int] | None = None,
                  hashed: bool = True) -> Examined:
    """A decoded photograph examined: the eye is found once and serves the preparation, the gradability and the
    hash (left empty unless ``hashed``: grading a photograph needs none, and a Kaggle kernel has no imagehash)."""
    check_method(method)
    rgb = to_rgb_uint8(img)
    eye = find_eye(rgb)  # letterboxed whole (``none``), the eye is still what is assessed and hashed
    out, square = prepare_eye(rgb, None if method == "none" else eye, method, size)
    if eye is not None:  # the measurements' square: from the prepared one where it is at least as large (cheap)
        square = (cv2.resize(square, (quality.SIDE,) * 2, interpolation=cv2.INTER_AREA)
                  if square is not None and size >= quality.SIDE else eye_square(rgb, eye, quality.SIDE))
    assessed = quality.assess(rgb, eye, eye_found=eye is not None, square=square)
    fingerprint = photo_hash(square) if eye is not None and hashed else ""
    original = original or (rgb.shape[1], rgb.shape[0])
    if eye is not None and method != "none":
        k = original[0] / rgb.shape[1]
        eye = Eye(eye.cx * k, eye.cy * k, eye.radius * k)
    else:
        eye = None
    return Examined(out, eye, original, assessed, fingerprint)


def decode_for_examining(source: str | os.PathLike | bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decoded at a resolution that serves a ``size`` model and the gradability's measurements alike."""
    # The eye is at least as wide as the smaller side, so decoding that side at `size` loses nothing.
    return decode_image(source, min_side=max(size, quality.SIDE))


def examine_file(source: str | os.PathLike | bytes, method: str, size: int, hashed: bool = True) -> Examined:
    """Decode and examine one photograph (a file or its bytes)."""
    img, original = decode_for_examining(source, size)
    return examine_image(img, method, size, original, hashed)


def encode_png(img: np.ndarray) -> bytes:
    """A prepared RGB image as PNG bytes."""
    # Fastest zlib level with run-length matching: quicker and smaller than the default on fundus images.
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def read_prepared(paths: Iterable[str]) -> np.ndarray:
    """Preprocessed PNGs (the preprocessing stage's output) as one uint8 RGB array (N, H, W, 3)."""
    def read(p):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"{p}: preprocessed image missing or unreadable: run retinopathy preprocess again")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    return np.stack([read(p) for p in paths])


def run_on_files(run, paths: list[str], n_outputs: int, batch: int = 32, progress=None) -> np.ndarray:
    """``run`` (prepared images (N, H, W, 3) → outputs) over prepared images on disk, ``batch`` at a time
    (``progress(done, total)`` after each)."""
    outputs = []
    for start in range(0, len(paths), batch):
        outputs.append(run(read_prepared(paths[start:start + batch])))
        if progress:
            progress(min(start + batch, len(paths)), len(paths))
    return np.concatenate(outputs) if outputs else np.zeros((0, n_outputs), np.float32)
