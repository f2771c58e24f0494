"""Fundus preprocessing as pure image functions (numpy/OpenCV, no file I/O): find the eye, crop, mask, normalise
(Ben Graham's local contrast, CLAHE), resize; and the one ``prepare`` that training, test prediction, the kernel
and the web app all call."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from ..config import PREPROCESSING
from ..errors import UserError

METHODS = tuple(PREPROCESSING)


def check_method(method: str) -> str:
    """``method`` where it is a preprocessing method, else one line naming the known ones."""
    if method not in METHODS:
        raise UserError(f"unknown preprocessing method '{method}': use one of {', '.join(METHODS)}")
    return method

# Bright text labels and speckle in the surround must not pass for retina: the eye is the largest bright region.
_FIND_SIDE = 256  # the eye is located on a copy this size: its edge is smooth, so precision holds after scaling up


@dataclass(frozen=True)
class Eye:
    """The retina's circle in image coordinates."""

    cx: float
    cy: float
    radius: float


# --------------------------------------------------------------------------------------------- pure functions
def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Any decoded image (grayscale, RGBA, 16-bit) as 8-bit, 3-channel RGB."""
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return np.stack([img] * 3, axis=-1)
    if img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3])
    if img.shape[2] == 1:
        return np.concatenate([img] * 3, axis=-1)
    return img


def _fit_circle(points: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (Kåsa) circle through 2-D points."""
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    a = np.stack([x, y, np.ones_like(x)], axis=1)
    b = x**2 + y**2
    (c0, c1, c2), *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = c0 / 2, c1 / 2
    return cx, cy, float(np.sqrt(max(c2 + cx**2 + cy**2, 0.0)))


def find_eye(img: np.ndarray, min_fraction: float = 0.05) -> Eye | None:
    """Locate the retina: centre and radius of its circle, or None for a blank image.

    The bright region is thresholded relative to the image's own dark and bright levels (robust to uneven light),
    cleaned of speckle and text by taking the largest component, and a circle is fitted to its outline; outline
    points on the frame's edge are left out, so circles cut at the top and bottom are fitted from their arcs, and
    points far off the first fit (notches) are dropped before a second fit.
    """
    rgb = to_rgb_uint8(img)
    h, w = rgb.shape[:2]
    scale = min(1.0, _FIND_SIDE / max(h, w))
    # Nearest-neighbour is enough for a threshold mask, and 20x cheaper than area averaging on a large frame.
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_NEAREST)
    gray = small.max(axis=2)  # the red channel is brightest on a retina; max copes with any tint
    low, high = np.percentile(gray, 1), np.percentile(gray, 95)
    if high - low < 10:
        return None  # flat: blank, all black or all white
    mask = (gray > low + max(5.0, 0.12 * (high - low))).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < min_fraction * gray.size:
        return None
    region = (labels == largest).astype(np.uint8)
    region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)[:, 0, :]
    sh, sw = gray.shape
    inner = outline[(outline[:, 0] > 1) & (outline[:, 0] < sw - 2) & (outline[:, 1] > 1) & (outline[:, 1] < sh - 2)]
    if len(inner) < 10:  # the retina fills the frame: take the frame's inscribed circle
        return Eye(w / 2, h / 2, min(w, h) / 2)
    cx, cy, r = _fit_circle(inner)
    residual = np.abs(np.hypot(inner[:, 0] - cx, inner[:, 1] - cy) - r)
    keep = residual < max(1.5, 3 * np.median(residual))
    if keep.sum() >= 10:
        cx, cy, r = _fit_circle(inner[keep])
    coarse = Eye((cx + 0.5) / scale, (cy + 0.5) / scale, (r + 0.5) / scale)
    threshold = low + max(5.0, 0.12 * (high - low))
    return _refine_edge(rgb, coarse, threshold, margin=2.5 / scale) if scale < 1 else coarse


def _refine_edge(rgb: np.ndarray, eye: Eye, threshold: float, margin: float, rays: int = 180) -> Eye:
    """Sharpen a coarse circle at full resolution: along rays across its edge, find where the brightness falls
    below ``threshold`` (its last crossing), and refit the circle to those points."""
    h, w = rgb.shape[:2]
    angles = np.linspace(0, 2 * np.pi, rays, endpoint=False)
    offsets = np.arange(-margin, margin + 1, 1.0)
    radii = eye.radius + offsets
    xs = eye.cx + np.cos(angles)[:, None] * radii[None, :]
    ys = eye.cy + np.sin(angles)[:, None] * radii[None, :]
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    usable = inside.all(axis=1)  # rays that leave the frame belong to a cut edge, not to the circle
    if usable.sum() < 20:
        return eye
    # Only the pixels on the rays are read: cheap even on a 16-megapixel photograph.
    samples = cv2.remap(rgb, xs[usable].astype(np.float32), ys[usable].astype(np.float32), cv2.INTER_LINEAR)
    profiles = cv2.blur(samples.max(axis=2).astype(np.float32), (3, 1))  # smooth along each ray (JPEG noise)
    bright = profiles > threshold
    # The edge is the last bright sample going outwards, so a dim rim inside does not pull the edge in.
    last = np.where(bright.any(axis=1), bright.shape[1] - 1 - np.argmax(bright[:, ::-1], axis=1), -1)
    found = (last >= 0) & (last < bright.shape[1] - 1)
    if found.sum() < 20:
        return eye
    r_edge = radii[last[found]] + 0.5
    a = angles[usable][found]
    points = np.stack([eye.cx + np.cos(a) * r_edge, eye.cy + np.sin(a) * r_edge], axis=1)
    cx, cy, r = _fit_circle(points)
    residual = np.abs(np.hypot(points[:, 0] - cx, points[:, 1] - cy) - r)
    keep = residual < max(2.0, 3 * np.median(residual))
    if keep.sum() >= 20:
        cx, cy, r = _fit_circle(points[keep])
    return Eye(cx, cy, r)


def crop_to_eye(img: np.ndarray, eye: Eye) -> np.ndarray:
    """The square around the eye's circle; parts outside the frame (cut circles) are padded black."""
    side = max(1, int(round(2 * eye.radius)))
    x0, y0 = int(round(eye.cx - eye.radius)), int(round(eye.cy - eye.radius))
    h, w = img.shape[:2]
    out = np.zeros((side, side) + img.shape[2:], img.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def eye_square(img: np.ndarray, eye: Eye, side: int) -> np.ndarray:
    """The eye's square (:func:`crop_to_eye`) resized to ``side``."""
    square = crop_to_eye(img, eye)
    interpolation = cv2.INTER_AREA if square.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(square, (side, side), interpolation=interpolation)


@functools.lru_cache(maxsize=16)
def circle_mask(size: int, fraction: float = 1.0) -> np.ndarray:
    """A disc (uint8, 1 inside) filling a ``size`` square, of radius ``fraction`` of the half side."""
    yy, xx = np.ogrid[:size, :size]
    c = (size - 1) / 2
    disc = ((xx - c) ** 2 + (yy - c) ** 2 <= (fraction * size / 2) ** 2).astype(np.uint8)
    disc.setflags(write=False)
    return disc


@functools.lru_cache(maxsize=16)
def _surround(size: int, fraction: float, fill: int, channels: int) -> np.ndarray:
    surround = ((1 - circle_mask(size, fraction)) * fill).astype(np.uint8)
    surround = np.repeat(surround[..., None], channels, axis=2) if channels > 1 else surround
    surround.setflags(write=False)
    return surround


def mask_circle(img: np.ndarray, fraction: float = 1.0, fill: int = 0) -> np.ndarray:
    """Set everything outside the centred circle to ``fill`` (a square uint8 image is assumed)."""
    size = img.shape[0]
    out = cv2.bitwise_and(img, img, mask=circle_mask(size, fraction))
    if fill:
        out = cv2.add(out, _surround(size, fraction, fill, img.shape[2] if img.ndim == 3 else 1))
    return out


def scale_to_radius(img: np.ndarray, eye: Eye, radius: int) -> np.ndarray:
    """Resize so the eye has the given radius in pixels."""
    factor = radius / eye.radius
    h, w = img.shape[:2]
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=interpolation)


def ben_graham(img: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Ben Graham's local colour normalisation: ``4·img − 4·GaussianBlur(img, σ) + 128``, σ ∝ image size.

    A blur this wide keeps only low frequencies, so it is computed on a copy shrunk until σ is about 4 px and
    scaled back up: 8× faster at 512 px, within about one grey level of the full-size blur.
    """
    sigma = sigma or img.shape[0] / 30
    shrink = max(1, int(sigma // 4))
    if shrink == 1:
        blurred = cv2.GaussianBlur(img, (0, 0), sigma)
    else:
        h, w = img.shape[:2]
        small = cv2.resize(img, (max(1, w // shrink), max(1, h // shrink)), interpolation=cv2.INTER_AREA)
        blurred = cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / shrink), (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(img, 4, blurred, -4, 128)


def clahe(img: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on the lightness channel only (colours kept)."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def resize_pad(img: np.ndarray, size: int) -> np.ndarray:
    """Fit into a ``size`` square keeping the aspect ratio, padding black: never stretch an eye into an oval."""
    h, w = img.shape[:2]
    factor = size / max(h, w)
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    out = np.zeros((size, size) + img.shape[2:], img.dtype)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = resized
    return out


def prepare(img: np.ndarray, method: str, size: int) -> tuple[np.ndarray, Eye | None]:
    """The one preprocessing path: any decoded image → a ``size`` square RGB uint8, and the eye found (or None).

    ``none`` letterboxes the whole frame; ``crop`` finds the eye, crops it square and masks the surround; ``ben``
    and ``clahe`` crop first and then normalise colour or contrast. An image with no eye found is letterboxed.
    """
    check_method(method)
    rgb = to_rgb_uint8(img)
    eye = None if method == "none" else find_eye(rgb)
    return prepare_eye(rgb, eye, method, size)[0], eye


def prepare_eye(rgb: np.ndarray, eye: Eye | None, method: str, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`prepare` once the eye is found (None: letterboxed whole); also the eye's square before the method's
    filters (None where there is no eye or the method is ``none``)."""
    if method == "none" or eye is None:
        return resize_pad(rgb, size), None
    # Crop first, then resize only the eye's square: the filters then run on `size` pixels.
    square = eye_square(rgb, eye, size)
    if method == "ben":
        return mask_circle(ben_graham(square), 0.95, fill=128), square
    if method == "clahe":
        return mask_circle(clahe(square)), square
    return mask_circle(square), square
