"""The preprocessing stage's manifest: one row per image of a processed folder. Its paths are stored relative (the
prepared PNG by its file name in the folder, the raw photograph relative to its competition folder), so a data
folder that is moved or copied reads its own files, never those at the old location."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..paths import MANIFEST

COLUMNS = ["id", "split", "source", "source_size", "source_mtime", "width", "height", "eye_x", "eye_y",
           "eye_radius", "status", "path", "digest", "gradable", "ungradable_reason", "brightness", "contrast",
           "focus", "phash"]


def read_manifest_file(folder: str | os.PathLike) -> pd.DataFrame:
    """A processed folder's manifest with each prepared image's ``path`` made absolute under ``folder`` (a
    manifest of an older release held absolute paths: their file name is looked up under ``folder`` too)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{path} not found: run retinopathy preprocess with this config first")
    try:
        manifest = pd.read_csv(path, dtype={"id": str, "path": str, "source": str, "source_size": str,
                                                 "source_mtime": str}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: not a readable manifest ({str(e).splitlines()[0][:80]}): run retinopathy "
                        "preprocess again") from None
    if not {"id", "split", "path"} <= set(manifest.columns):
        raise UserError(f"{path}: not a manifest (no id, split and path columns): run retinopathy preprocess again")
    return absolute_paths(manifest, folder)


def absolute_paths(manifest: pd.DataFrame, folder: str | os.PathLike) -> pd.DataFrame:
    """``path`` as absolute paths under ``folder`` ('' stays: the image has no prepared file)."""
    folder = Path(folder)
    return manifest.assign(path=[str(folder / Path(p).name) if p else "" for p in manifest["path"].astype(str)])


def relative_paths(manifest: pd.DataFrame) -> pd.DataFrame:
    """``path`` as the file's name alone, as the manifest stores it."""
    return manifest.assign(path=[Path(p).name if p else "" for p in manifest["path"].astype(str)])
