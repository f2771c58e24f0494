"""Preprocessing speed on real full-resolution EyePACS photographs, per core, three ways side by side:

  ours         the preprocessing stage's path: reduced-resolution decode, find the eye, crop, Ben, the gradability
               and the hash (and, in the
               "+ PNG write" row, the encoding of the cached file)
  naive        the usual kernel recipe: full cv2.imread, crop the non-black box, resize, Ben at full blur cost
  decode-only  OpenCV's reduced-resolution decode alone, at the same reduction ours picks: the ceiling

  python benchmarks/preprocess.py [--size 512] [--rounds 5] [--images ../shared/data/eyepacs-sample/train]

Goals (issue #4): ours at least 4x the naive way at 512 px, and at least 60% of decode-only speed.
"""

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from retinopathy.preprocessing.image_io import _REDUCED, encode_png, examine_file, reduction_factor

DEFAULT_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eyepacs-sample" / "train"


def naive(path: Path, size: int) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    mask = img.max(axis=2) > 7
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    img = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    img = cv2.resize(img, (size, size))
    return cv2.addWeighted(img, 4, cv2.GaussianBlur(img, (0, 0), size / 30), -4, 128)


def decode_only(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:  # reads the header only
        factor = reduction_factor(im.size, size)
    return cv2.imread(str(path), _REDUCED.get(factor, cv2.IMREAD_COLOR))


def ours(path: Path, size: int) -> np.ndarray:
    return examine_file(path, "ben", size).image


def ours_with_write(path: Path, size: int) -> bytes:
    return encode_png(examine_file(path, "ben", size).image)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    files = sorted(args.images.glob("*.jp*g"))
    if not files:
        raise SystemExit(f"no JPEGs in {args.images}")
    cv2.setNumThreads(1)  # per core: the batch stage runs one such process per core
    ways = {"naive": naive, "decode-only": decode_only, "ours": ours, "ours + PNG write": ours_with_write}
    for fn in ways.values():  # warm the page cache and the libraries
        fn(files[0], args.size)
    timings = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved, so a busy moment hurts every way alike
        for name, fn in ways.items():
            start = time.perf_counter()
            for path in files:
                fn(path, args.size)
            timings[name].append((time.perf_counter() - start) / len(files))
    ms = {name: statistics.median(t) * 1000 for name, t in timings.items()}
    print(f"{len(files)} images from {args.images}, {args.size} px, 1 core, median of {args.rounds} rounds\n")
    print("| way | ms / image | images / s / core | vs naive | vs decode-only |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} | {1000 / value:.1f} | {ms['naive'] / value:.2f}x | "
              f"{ms['decode-only'] / value:.0%} |")
    speedup, share = ms["naive"] / ms["ours"], ms["decode-only"] / ms["ours"]
    print(f"\nours vs naive: {speedup:.2f}x (goal >= 4x): {'met' if speedup >= 4 else 'NOT met'}")
    print(f"ours vs decode-only: {share:.0%} (goal >= 60%): {'met' if share >= 0.6 else 'NOT met'}")


if __name__ == "__main__":
    main()
