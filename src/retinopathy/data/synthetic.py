"""A synthetic competition in either Kaggle layout, for demos and tests where no real download is at hand.

The images look like fundus photographs: a black surround, a lit retina of varying size and position (sometimes cut
at top and bottom, as in many EyePACS photos), an optic disc, a macula, branching vessels, and lesions whose number
and kind follow the grade: microaneurysms (1), haemorrhages and hard exudates (2), many more with cotton-wool spots
(3), new vessels and pre-retinal haemorrhage (4). Lesion sizes are relative to the eye, so grades stay learnable at
the small sizes a CPU demo trains on. Every image is drawn from its own seeded generator: the same seed gives the
same competition, whatever the number of worker processes.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd

from ..competitions import APTOS2019, Competition, get_competition
from ..errors import UserError
from ..files import process_pool
from ..progress import progress_bar


class Eye(NamedTuple):
    """Where the retina is drawn: its centre and radius in pixels."""

    cx: float
    cy: float
    radius: float

#: the hidden test grades a synthetic competition ships beside the Kaggle files: its mark, too
SOLUTION = "solution.csv"


#: Images per grade in the real training sets (APTOS 2019 of 3,662; EyePACS 2015 of 35,126).
GRADE_COUNTS = {
    APTOS2019.slug: (1805, 370, 999, 193, 295),
    "diabetic-retinopathy-detection": (25810, 2443, 5292, 873, 708),
}

#: Image shapes (width, height) as fractions of ``max_side``: the aspect ratios real fundus cameras produce.
_SHAPES = ((1.0, 0.75), (1.0, 0.667), (1.0, 1.0), (1.0, 0.625), (1.0, 0.8))


def _random_walk(rng: np.random.Generator, start, angle, length, step, wiggle) -> np.ndarray:
    """A smooth random curve of ``length`` pixels from ``start`` heading ``angle``."""
    points = [np.asarray(start, float)]
    heading = angle
    for _ in range(max(2, int(length / step))):
        heading += rng.normal(0, wiggle)
        points.append(points[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    return np.array(points)


def _draw_vessels(canvas, rng, disc, eye: Eye, colour, scale) -> None:
    """Four arcades leaving the disc, each branching twice, thinner as they go."""
    r = eye.radius
    temporal = 1.0 if disc[0] < eye.cx else -1.0  # arcades curve towards the macula
    for vertical in (-1, 1):
        for spread in (0.35, 1.1):
            angle = math.atan2(vertical * spread, temporal if spread < 1 else -temporal)
            trunk = _random_walk(rng, disc, angle, r * rng.uniform(1.0, 1.5), r * 0.04, 0.12)
            width = max(1, int(round(r * 0.018 * scale)))
            cv2.polylines(canvas, [trunk.astype(np.int32)], False, colour, width, cv2.LINE_AA)
            for _ in range(3):
                at = trunk[rng.integers(len(trunk) // 4, len(trunk) - 1)]
                branch = _random_walk(rng, at, angle + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0),
                                      r * rng.uniform(0.3, 0.7), r * 0.04, 0.2)
                cv2.polylines(canvas, [branch.astype(np.int32)], False, colour, max(1, width // 2), cv2.LINE_AA)


def _random_point(rng, eye: Eye, max_frac=0.9) -> tuple[int, int]:
    """A point inside the retina, uniform over its area."""
    rho = eye.radius * max_frac * math.sqrt(rng.uniform())
    theta = rng.uniform(0, 2 * math.pi)
    return int(eye.cx + rho * math.cos(theta)), int(eye.cy + rho * math.sin(theta))


def _draw_lesions(img, rng, grade: int, eye: Eye, disc) -> None:
    r = eye.radius
    # (count range per grade) for each lesion kind; grade 0 has none.
    microaneurysms = ((0, 0), (4, 10), (6, 16), (10, 25), (10, 25))[grade]
    haemorrhages = ((0, 0), (0, 0), (3, 8), (10, 22), (8, 20))[grade]
    exudates = ((0, 0), (0, 0), (4, 12), (8, 22), (6, 18))[grade]
    cotton_wool = ((0, 0), (0, 0), (0, 2), (2, 5), (1, 4))[grade]
    for _ in range(rng.integers(*microaneurysms, endpoint=True)):
        cv2.circle(img, _random_point(rng, eye, 0.8), max(1, int(r * rng.uniform(0.010, 0.018))),
                   (120, 10, 10), -1, cv2.LINE_AA)
    for _ in range(rng.integers(*haemorrhages, endpoint=True)):
        axes = (max(1, int(r * rng.uniform(0.02, 0.05))), max(1, int(r * rng.uniform(0.015, 0.04))))
        cv2.ellipse(img, _random_point(rng, eye, 0.85), axes, rng.uniform(0, 180), 0, 360, (110, 15, 10), -1,
                    cv2.LINE_AA)
    # Hard exudates gather in clusters, often in rings around leaking vessels.
    for _ in range(-(-rng.integers(*exudates, endpoint=True) // 3)):  # ceil: clusters of about three
        centre = np.array(_random_point(rng, eye, 0.7))
        for _ in range(rng.integers(2, 6)):
            spot = centre + rng.normal(0, r * 0.04, 2)
            cv2.circle(img, tuple(int(v) for v in spot), max(1, int(r * rng.uniform(0.010, 0.022))),
                       (245, 225, 110), -1, cv2.LINE_AA)
    for _ in range(rng.integers(*cotton_wool, endpoint=True)):
        layer = np.zeros_like(img)
        cv2.ellipse(layer, _random_point(rng, eye, 0.7),
                    (int(r * rng.uniform(0.04, 0.07)), int(r * rng.uniform(0.03, 0.05))),
                    rng.uniform(0, 180), 0, 360, (90, 90, 70), -1, cv2.LINE_AA)
        img[:] = cv2.add(img, cv2.GaussianBlur(layer, (0, 0), r * 0.015))
    if grade == 4:
        # Neovascularisation: tangles of fine, tortuous new vessels at the disc or elsewhere.
        for _ in range(rng.integers(2, 5)):
            start = disc if rng.uniform() < 0.5 else _random_point(rng, eye, 0.6)
            for _ in range(rng.integers(4, 8)):
                loop = _random_walk(rng, start, rng.uniform(0, 2 * math.pi), r * 0.25, r * 0.02, 0.6)
                cv2.polylines(img, [loop.astype(np.int32)], False, (150, 20, 30), max(1, int(r * 0.008)),
                              cv2.LINE_AA)
        if rng.uniform() < 0.5:  # pre-retinal (boat-shaped) haemorrhage
            x, y = _random_point(rng, eye, 0.6)
            cv2.ellipse(img, (x, y), (int(r * 0.15), int(r * 0.09)), 0, 0, 180, (90, 5, 5), -1, cv2.LINE_AA)


def fundus_image(grade: int, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One RGB fundus-like photograph of the given grade (uint8, ``height × width × 3``)."""
    # The retina: sometimes wider than the frame is tall, so the circle is cut at top and bottom.
    radius = min(width, height) / 2 * rng.uniform(0.8, 1.12)
    radius = min(radius, width / 2 * 0.97)
    eye = Eye(width / 2 + rng.normal(0, width * 0.02), height / 2 + rng.normal(0, height * 0.02), radius)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dist = np.sqrt((xx - eye.cx) ** 2 + (yy - eye.cy) ** 2) / eye.radius

    base = np.array([rng.uniform(170, 230), rng.uniform(70, 120), rng.uniform(20, 55)], np.float32)
    light_dir = rng.uniform(0, 2 * math.pi)
    gradient = 1 + 0.2 * ((xx - eye.cx) * math.cos(light_dir) + (yy - eye.cy) * math.sin(light_dir)) / eye.radius
    vignette = np.clip(1.05 - 0.45 * dist**2.5, 0, None) * gradient
    img = np.clip(base[None, None, :] * vignette[..., None], 0, 255).astype(np.uint8)

    side = rng.choice([-1, 1])  # left or right eye: which side the disc is on
    disc = (int(eye.cx + side * eye.radius * rng.uniform(0.3, 0.42)), int(eye.cy + rng.normal(0, eye.radius * 0.04)))
    macula = (int(eye.cx - side * eye.radius * 0.08), int(eye.cy))
    shade = np.zeros_like(img)
    cv2.circle(shade, macula, int(eye.radius * 0.16), (60, 40, 15), -1)
    img = cv2.subtract(img, cv2.GaussianBlur(shade, (0, 0), eye.radius * 0.07))

    vessels = np.zeros_like(img)
    _draw_vessels(vessels, rng, disc, eye, (90, 60, 30), scale=1.0)
    img = cv2.subtract(img, cv2.GaussianBlur(vessels, (0, 0), max(0.6, eye.radius * 0.003)))

    disc_radius = int(eye.radius * rng.uniform(0.09, 0.12))
    cv2.circle(img, disc, disc_radius, (250, 210, 140), -1, cv2.LINE_AA)
    cv2.circle(img, disc, int(disc_radius * 0.45), (255, 240, 200), -1, cv2.LINE_AA)

    _draw_lesions(img, rng, grade, eye, disc)

    img = cv2.GaussianBlur(img, (0, 0), max(0.5, eye.radius * 0.002))  # camera optics
    noise = rng.normal(0, 4, img.shape).astype(np.float32)
    img = np.clip(img.astype(np.float32) + noise, 0, 255)
    img[dist > 1.0] = rng.uniform(0, 6)  # the black surround, not quite zero as in real cameras
    return img.astype(np.uint8)


def _write_image(job: tuple[Path, int, int, int, int, int]) -> None:
    path, grade, width, height, seed, index = job
    rng = np.random.default_rng([seed, index])
    rgb = fundus_image(grade, rng, width, height)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.suffix == ".jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write {path}")


def _draw_grades(rng: np.random.Generator, n: int, frequencies) -> np.ndarray:
    """Grades with the real imbalance, but every grade present at least once when n allows."""
    grades = rng.choice(5, size=n, p=frequencies)
    if n >= 10:
        missing = [g for g in range(5) if g not in grades]
        grades[rng.choice(n, size=len(missing), replace=False)] = missing
    return grades


def _ids_and_grades(competition: Competition, n: int, rng) -> tuple[list[str], np.ndarray]:
    counts = np.asarray(GRADE_COUNTS[competition.slug], float)
    frequencies = counts / counts.sum()
    if not competition.paired_eyes:
        ids = [f"{v:012x}" for v in rng.integers(0, 16**12, size=n)]
        return ids, _draw_grades(rng, n, frequencies)
    # EyePACS: two eyes a patient, graded alike more often than not (disease is bilateral).
    patients = np.sort(rng.choice(np.arange(10, 10 + 20 * n), size=(n + 1) // 2, replace=False))
    left = _draw_grades(rng, len(patients), frequencies)
    right = np.clip(left + rng.choice([-1, 0, 0, 0, 1], size=len(left)), 0, 4)
    ids = [f"{p}_{eye}" for p in patients for eye in ("left", "right")]
    grades = np.stack([left, right], axis=1).ravel()
    return ids[:n], grades[:n]


def make_competition(out_dir: str | os.PathLike, competition: str = APTOS2019.slug, n_train: int = 200,
                     n_test: int = 50, seed: int = 0, max_side: int = 512, workers: int | None = None,
                     progress: bool = True) -> Path:
    """Write a synthetic competition in ``competition``'s Kaggle layout to ``out_dir``.

    Besides the Kaggle files it writes ``solution.csv`` (the hidden test grades), so a demo can score its
    submission. The folder appears only once complete (built under a temporary name, then renamed).
    """
    comp = get_competition(competition)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserError(f"{out_dir} already exists; remove it or choose another folder")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    train_ids, train_grades = _ids_and_grades(comp, n_train, rng)
    test_ids, test_grades = _ids_and_grades(comp, n_test, rng)
    if comp.paired_eyes:  # test patients must differ from training patients
        test_ids = [f"{int(i.split('_')[0]) + 20 * n_train + 10}_{i.split('_')[1]}" for i in test_ids]

    jobs = []
    for split, ids, grades in (("train", train_ids, train_grades), ("test", test_ids, test_grades)):
        (tmp / (comp.train_images if split == "train" else comp.test_images)).mkdir(parents=True)
        for image_id, grade in zip(ids, grades, strict=False):
            w_frac, h_frac = _SHAPES[rng.integers(len(_SHAPES))]
            side = int(max_side * rng.uniform(0.7, 1.0))
            jobs.append((comp.image_path(tmp, split, image_id), int(grade), int(side * w_frac), int(side * h_frac),
                         seed, len(jobs)))

    workers = workers or min(os.cpu_count() or 1, 8)
    bar = progress_bar(total=len(jobs), desc=f"synthesizing {comp.aliases[0]}", unit="img", show=progress)
    if workers > 1:
        with process_pool(workers) as pool:
            for _ in pool.map(_write_image, jobs, chunksize=8):
                bar.update()
    else:
        for job in jobs:
            _write_image(job)
            bar.update()
    bar.close()

    labels = pd.DataFrame({comp.id_column: train_ids, comp.label_column: train_grades})
    labels.to_csv(tmp / comp.labels_csv, index=False)
    pd.DataFrame({comp.id_column: test_ids, comp.label_column: 0}).to_csv(tmp / comp.sample_submission, index=False)
    if comp.test_csv:
        pd.DataFrame({comp.id_column: test_ids}).to_csv(tmp / comp.test_csv, index=False)
    pd.DataFrame({comp.id_column: test_ids, comp.label_column: test_grades}).to_csv(tmp / SOLUTION, index=False)
    os.replace(tmp, out_dir)
    return out_dir
