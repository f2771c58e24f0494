"""Label-cleaning decisions (from fastai's ``ImageClassifierCleaner`` in the notebook, or written by hand), kept
in ``data/cleaning/<dataset>.csv`` with columns ``id, action, grade`` (action: ``drop`` or ``relabel``).

The raw labels file is never edited: the folds stage reads the decisions and applies them on the way.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..files import write_csv

ACTIONS = ("drop", "relabel")


def decisions_path(experiment) -> Path:
    """Where the cleaning decisions of this experiment's dataset are kept."""
    return experiment.paths.data / "cleaning" / f"{experiment.config.dataset_name}.csv"


def read_decisions(path: Path) -> pd.DataFrame:
    """The decisions file as a table (empty where there is none), each row checked."""
    if not path.is_file():
        return pd.DataFrame(columns=["id", "action", "grade"])
    table = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    if list(table.columns[:3]) != ["id", "action", "grade"]:
        raise UserError(f"{path}: columns must be id,action,grade")
    for i, row in table.iterrows():
        if row["action"] not in ACTIONS:
            raise UserError(f"{path}, row {i + 2}: action '{row['action']}' is not drop or relabel")
        if row["action"] == "relabel" and str(row["grade"]) not in {"0", "1", "2", "3", "4"}:
            raise UserError(f"{path}, row {i + 2}: relabel needs a grade 0-4, got '{row['grade']}'")
    return table


def apply_decisions(labels: pd.DataFrame, path: Path, verbose: bool = True) -> pd.DataFrame:
    """Labels (id, grade) with the decisions applied: dropped rows left out, relabelled rows given their grade."""
    decisions = read_decisions(path).drop_duplicates("id", keep="last")
    if decisions.empty:
        return labels
    dropped = set(decisions.loc[decisions["action"] == "drop", "id"])
    relabel = decisions[decisions["action"] == "relabel"].set_index("id")["grade"].astype(int)
    out = labels[~labels["id"].isin(dropped)].copy()
    changed = out["id"].isin(relabel.index)
    out.loc[changed, "grade"] = out.loc[changed, "id"].map(relabel)
    if verbose:
        print(f"cleaning: {len(labels) - len(out)} image(s) dropped, {int(changed.sum())} relabelled ({path})")
    return out.reset_index(drop=True)


def record_decisions(path: Path, drops: list[str], relabels: dict[str, int]) -> pd.DataFrame:
    """Add decisions to the file (a later decision about an id replaces an earlier one)."""
    new = pd.DataFrame([{"id": i, "action": "drop", "grade": ""} for i in drops]
                       + [{"id": i, "action": "relabel", "grade": int(g)} for i, g in relabels.items()],
                       columns=["id", "action", "grade"])
    table = pd.concat([read_decisions(path), new], ignore_index=True).drop_duplicates("id", keep="last")
    write_csv(table, path)
    return table
