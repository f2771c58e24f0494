"""Every photograph of a competition folder examined once for what ``verify`` reports: its perceptual hash (copies)
and its gradability. Kept in ``data/cleaning/<dataset>-photographs.csv`` and reused for every file whose size and
modification time are unchanged, so verifying again, or verifying another competition beside it, redoes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..competitions import Competition, read_labels, read_test_ids
from ..files import process_pool, write_csv
from ..progress import progress_bar
from .fundus import resize_pad
from .image_io import decode_image, examine_file

COLUMNS = ["id", "split", "file", "bytes", "mtime_ns", "phash", "gradable", "ungradable_reason", "brightness",
           "contrast", "focus"]


def _examine(job: tuple[str, str, str]) -> dict:
    image_id, split, path = job
    stat = os.stat(path)
    row = {"id": image_id, "split": split, "file": path, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "phash": "", "gradable": False, "ungradable_reason": "cannot be decoded"}
    try:
        examined = examine_file(path, "crop", 32)  # the prepared image is not kept: the smallest will do
    except Exception:  # noqa: BLE001 - verify's decoding check names what is wrong with such a file
        return row
    return {**row, "phash": examined.phash, **examined.quality.record()}


def survey_dataset(raw_dir: Path, competition: Competition, cache: Path, workers: int | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """The table of every labelled training and every test photograph present (``COLUMNS``), written to
    ``cache``; rows of unchanged files are taken from it."""
    ids = [(i, "train") for i in read_labels(raw_dir, competition)["id"]]
    ids += [(i, "test") for i in (read_test_ids(raw_dir, competition) or [])]
    jobs = [(i, split, str(competition.image_path(raw_dir, split, i))) for i, split in ids]
    jobs = [job for job in jobs if os.path.isfile(job[2])]
    previous = {}
    if cache.is_file():
        old = pd.read_csv(cache, dtype={"id": str, "phash": str}, keep_default_na=False)
        previous = {(r["file"], int(r["bytes"]), int(r["mtime_ns"])): r for r in old.to_dict("records")}
    rows, todo = [], []
    for job in jobs:
        stat = os.stat(job[2])
        known = previous.get((job[2], stat.st_size, stat.st_mtime_ns))
        (rows.append({**known, "id": job[0], "split": job[1]}) if known else todo.append(job))
    workers = workers or os.cpu_count() or 1
    if todo:
        with progress_bar(total=len(todo), desc=f"examine {competition.slug}", unit="img", show=progress) as bar:
            pool = process_pool(workers) if workers > 1 and len(todo) > 16 else None
            for row in (pool.map(_examine, todo, chunksize=8) if pool else map(_examine, todo)):
                rows.append(row)
                bar.update()
            if pool:
                pool.shutdown()
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_csv(table, cache)
    return table


def groups_sheet(table: pd.DataFrame, files: dict[str, str], size: int = 128, max_groups: int = 120,
                 max_copies: int = 6) -> np.ndarray:
    """A contact sheet of groups of copies: one row a group, each copy with its id, split and grade, so a person
    can check that each row is one photograph (and see which grades disagree)."""
    rows = []
    for group, members in list(table.groupby("group", sort=True))[:max_groups]:
        tiles = []
        for member in members.head(max_copies).itertuples():
            img, _ = decode_image(files[member.image_id], min_side=size)
            tile = np.pad(resize_pad(img, size), ((0, 34), (2, 2), (0, 0)), constant_values=255)
            grade = "test" if member.split == "test" or pd.isna(member.grade) else f"grade {int(member.grade)}"
            cv2.putText(tile, str(member.image_id)[:16], (3, size + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
            cv2.putText(tile, f"{grade}  d={member.distance}", (3, size + 28), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                        (180, 0, 0) if members["grade"].nunique() > 1 else (0, 0, 0), 1)
            tiles.append(tile)
        row = np.hstack(tiles)
        label = np.full((row.shape[0], 44, 3), 255, np.uint8)
        cv2.putText(label, f"#{group}", (2, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        rows.append(np.hstack([label, row]))
    if not rows:
        return np.full((40, 400, 3), 255, np.uint8)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1] + 12), (0, 0)), constant_values=255) for r in rows]
    columns = 1 if len(rows) <= 12 else 4  # many groups: side by side, so the sheet reads on one screen or two
    per_column = -(-len(rows) // columns)
    stacks = [np.vstack(rows[k:k + per_column]) for k in range(0, len(rows), per_column)]
    height = max(stack.shape[0] for stack in stacks)
    return np.hstack([np.pad(stack, ((0, height - stack.shape[0]), (0, 0), (0, 0)), constant_values=255)
                      for stack in stacks])
