"""A fold's ``history.csv`` as a person reads it: one row per epoch, numbered from 1 within each phase."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def tidy_history(history_file: Path, phases: list[tuple[str, int]]) -> pd.DataFrame:
    """fastai's CSVLogger rows (its header repeated at each fit, each fit and each resumed part counting its epochs
    from 0) as one table: ``step`` (1, 2, ... over the whole run), ``phase`` and ``epoch`` (1, 2, ... within
    the phase), then the logged columns."""
    history = pd.read_csv(history_file)
    history = history[history["epoch"].astype(str) != "epoch"].reset_index(drop=True)
    numeric = [c for c in history.columns if c != "time"]
    history[numeric] = history[numeric].apply(pd.to_numeric, errors="coerce")
    history = history.drop(columns=[c for c in ("step", "phase") if c in history.columns])
    names = [name for name, n in phases for _ in range(n)][:len(history)]
    history.insert(0, "step", np.arange(1, len(history) + 1))
    history.insert(1, "phase", names + [phases[-1][0]] * (len(history) - len(names)))
    history["epoch"] = history.groupby("phase", sort=False).cumcount() + 1
    return history
