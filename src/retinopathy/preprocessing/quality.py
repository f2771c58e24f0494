"""Whether a photograph can be graded at all, and why not: measured on the eye's square at one fixed size, from
cheap statistics (exposure, contrast, focus as the spread of the Laplacian, the shape of the lit field), so the
same photograph gets the same answer whatever size a config prepares it at.

The thresholds were calibrated on the 2,939 real photographs in ``../shared/data`` (2,929 APTOS at 224 px, 10
full-resolution EyePACS) and on copies of them blurred, darkened, burnt out and clouded: each sits beyond every
real photograph's value but for focus, where it sits below the lowest 0.1 % (two soft, hazy APTOS photographs are
called out of focus), and catches 97 % or more of each kind of degraded copy (``benchmarks/quality.py`` prints
both sides).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .fundus import Eye, circle_mask, eye_square, find_eye, to_rgb_uint8

#: side of the eye's square the measurements are taken on (decode at least this much of a photograph)
SIDE = 256
MIN_PIXELS = 32  # a smaller picture holds no retina to grade
MIN_EYE_FRACTION = 0.5  # eye radius / half the frame's smaller side: real photographs 0.78 and up
MAX_LIT_CORNERS = 0.2  # share of the square's corners that is lit: real photographs 0.10 at most
MIN_LIT_DISC = 0.7  # share of the eye's disc that is lit: real photographs 0.86 and up
MIN_BRIGHTNESS = 30  # mean of the brightest channel in the disc: real 36 and up, darkened copies 25 and below
MAX_GREEN = 170  # mean of the green channel in the disc (red saturates on many a good photograph, green does not):
#                  real photographs 146 at most, burnt-out copies 187 and up
MIN_CONTRAST = 3.5  # spread of the green channel on the lit disc: real 3.8 and up, clouded copies mostly below
MIN_FOCUS = 0.035  # spread of the Laplacian over the spread of the green channel: real 0.026 (lowest), 0.037
#                    (0.1st percentile), 0.124 (median); blurred copies 0.018 (median), 0.051 (99th percentile)


@dataclass(frozen=True)
class Quality:
    """A photograph's gradability: ``reason`` says why not ('' when gradable), beside what was measured."""

    reason: str = ""
    brightness: float = float("nan")
    contrast: float = float("nan")
    focus: float = float("nan")

    @property
    def gradable(self) -> bool:
        """Whether a grade of this photograph means anything."""
        return not self.reason

    def record(self) -> dict:
        """Columns for a table (the manifest, verify's report)."""
        return {"gradable": self.gradable, "ungradable_reason": self.reason,
                **{k: round(v, 4) for k, v in asdict(self).items() if k != "reason"}}


@functools.lru_cache(maxsize=1)
def _regions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The square's disc, the inner disc its detail is measured in (the rim's edge is no detail), its corners."""
    return (circle_mask(SIDE, 0.9).astype(bool), circle_mask(SIDE, 0.85).astype(bool),
            ~circle_mask(SIDE, 1.1).astype(bool))


def assess(img: np.ndarray, eye: Eye | None = None, eye_found: bool = True,
           square: np.ndarray | None = None) -> Quality:
    """The gradability of a decoded photograph (``eye`` as :func:`~.fundus.find_eye` found it, if already
    looked for: pass ``eye_found=False`` for a search that found nothing; ``square``: its eye square at
    :data:`SIDE`, if already made)."""
    rgb = to_rgb_uint8(img)
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_PIXELS:
        return Quality(f"too small ({w}x{h} pixels)")
    if eye is None and eye_found:
        eye = find_eye(rgb)
    if eye is None:
        return Quality("no eye found (blank, flat or not a fundus photograph)")
    if eye.radius < MIN_EYE_FRACTION * min(h, w) / 2:
        return Quality("eye too small in the frame")
    square = eye_square(rgb, eye, SIDE) if square is None else square
    lum = cv2.max(cv2.max(square[..., 0], square[..., 1]), square[..., 2])  # numpy's max over axis 2: 10x slower
    disc_region, inner_region, corners = _regions()
    present = lum > 0  # parts cut off by the frame are padded black
    disc = disc_region & present
    level = float(lum[disc].mean()) if disc.any() else 0.0
    if (lum[corners] > 0.5 * level).mean() > MAX_LIT_CORNERS or (lum[disc] > 0.25 * level).mean() < MIN_LIT_DISC:
        return Quality("no round field of view (not a fundus photograph)")
    green = square[..., 1].astype(np.float32)
    lit = disc & (lum > 0.25 * level)  # a circle fitted to a stretched eye takes in some black: no contrast
    brightness, contrast = level, float(green[lit].std())
    laplacian = cv2.Laplacian(cv2.GaussianBlur(green, (0, 0), 1.0), cv2.CV_32F)  # the blur: JPEG noise is no focus
    focus = float(laplacian[inner_region & lit].std() / max(contrast, 1e-6))
    measured = {"brightness": brightness, "contrast": contrast, "focus": focus}
    if brightness < MIN_BRIGHTNESS:
        return Quality("under-exposed", **measured)
    if green[lit].mean() > MAX_GREEN:
        return Quality("over-exposed", **measured)
    if contrast < MIN_CONTRAST:
        return Quality("too little contrast", **measured)
    if focus < MIN_FOCUS:
        return Quality("out of focus", **measured)
    return Quality("", **measured)
