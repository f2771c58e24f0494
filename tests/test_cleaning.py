"""Cleaning decisions are applied by the folds stage; the raw labels stay untouched."""

import pandas as pd
import pytest

from retinopathy.data.cleaning import apply_decisions, read_decisions, record_decisions
from retinopathy.errors import UserError


def test_decisions_drop_and_relabel(tmp_path):
    labels = pd.DataFrame({"id": ["a", "b", "c", "d"], "grade": [0, 1, 2, 3]})
    path = tmp_path / "cleaning" / "x.csv"
    record_decisions(path, drops=["b"], relabels={"c": 4})
    record_decisions(path, drops=[], relabels={"d": 0, "c": 3})  # a later decision about c replaces the first
    cleaned = apply_decisions(labels, path, verbose=False)
    assert cleaned.to_dict("list") == {"id": ["a", "c", "d"], "grade": [0, 3, 0]}
    assert labels["grade"].tolist() == [0, 1, 2, 3], "the input is not modified"
    assert apply_decisions(labels, tmp_path / "none.csv", verbose=False) is labels


def test_bad_decisions_file_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,action,grade\na,burn,\n")
    with pytest.raises(UserError, match=r"row 2: action 'burn'"):
        read_decisions(path)
    path.write_text("id,action,grade\na,relabel,9\n")
    with pytest.raises(UserError, match="relabel needs a grade 0-4"):
        read_decisions(path)

