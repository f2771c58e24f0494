"""Copies of one photograph among a competition's images (found from their perceptual hashes, which the
preprocessing stage records), kept together in one fold, and what to do where copies carry different grades.

A pair of photographs within :data:`MAX_DISTANCE` bits is a copy; groups are the connected pairs, so a chain of
copies is one group. The table written to ``data/cleaning/<dataset>-duplicates.csv`` lists every image in a group
of two or more: ``group, image_id, split, grade, distance`` (to the group's first member).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UserError

#: bits (of 256) within which two photographs are copies. Among the shared APTOS images copies lie within 8 bits
#: (two cropped differently at 50) and different photographs 64 and more apart; copies of them rescaled,
#: recompressed or cropped by a few per cent mostly within 50; a different photograph of the same eye, turned or
#: shifted, 100 and more (``benchmarks/duplicates.py`` prints these)
MAX_DISTANCE = 56

#: what the folds do with a group whose copies carry different grades
POLICIES = {"drop": "groups whose grades differ are left out (the default: measured best, benchmarks/duplicates.py)",
            "keep": "every copy stays, all in one fold",
            "merge": "one row per group: the majority grade (heads that learn numbers: the rounded mean)"}


def hash_bits(hashes: pd.Series) -> np.ndarray:
    """Hex hashes as rows of bytes (N, bytes); rows of an empty hash are all zero (and never compared)."""
    width = max((len(h) for h in hashes if h), default=2) // 2
    return np.array([np.frombuffer(bytes.fromhex(h), np.uint8) if h else np.zeros(width, np.uint8)
                     for h in hashes], dtype=np.uint8).reshape(len(hashes), width)


def hamming(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The bits in which each of ``rows`` differs from each of ``others`` (hashes as bytes): a rows x others matrix."""
    distance = np.zeros((len(rows), len(others)), np.int32)
    for byte in range(others.shape[1]):
        distance += np.bitwise_count(rows[:, byte, None] ^ others[None, :, byte])
    return distance


def copy_groups(hashes: pd.Series, max_distance: int = MAX_DISTANCE, block: int = 2048) -> np.ndarray:
    """A group number per photograph (photographs without a copy get a group of their own, as do those without a
    hash); numbered from 0 in order of first appearance."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    hashes = pd.Series(hashes).fillna("").astype(str).reset_index(drop=True)
    bits = hash_bits(hashes)
    valid = np.flatnonzero(hashes.str.len() > 0)
    rows, cols = [], []
    packed = bits[valid]
    for start in range(0, len(valid), block):  # blocks keep memory at block x N distances (EyePACS: 88,000 images)
        a, b = np.nonzero(hamming(packed[start:start + block], packed) <= max_distance)
        keep = start + a < b
        rows.append(valid[start + a[keep]])
        cols.append(valid[b[keep]])
    rows, cols = np.concatenate(rows or [[]]).astype(int), np.concatenate(cols or [[]]).astype(int)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(hashes),) * 2)
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))  # renumber by first appearance
    return order[labels]


def copies_of(hashes: pd.Series, others: pd.Series, max_distance: int = MAX_DISTANCE, block: int = 2048) -> np.ndarray:
    """Per photograph of ``hashes``: whether it is a copy (within ``max_distance`` bits) of any of ``others``
    (photographs without a hash are never copies)."""
    hashes = pd.Series(hashes).fillna("").astype(str).reset_index(drop=True)
    others = pd.Series(others).fillna("").astype(str)
    others = others[others.str.len() > 0].reset_index(drop=True)
    found = np.zeros(len(hashes), bool)
    valid = np.flatnonzero(hashes.str.len() > 0)
    if not len(valid) or others.empty:
        return found
    mine, theirs = hash_bits(hashes[valid]), hash_bits(others)
    for start in range(0, len(valid), block):
        found[valid[start:start + block]] = (hamming(mine[start:start + block], theirs) <= max_distance).any(axis=1)
    return found


def duplicates_table(images: pd.DataFrame, max_distance: int = MAX_DISTANCE) -> pd.DataFrame:
    """From ``images`` (id, split, phash, grade; more datasets may be stacked with a ``dataset`` column): the images
    in groups of two or more, as ``group, image_id, split, grade, distance`` (and ``dataset`` where given)."""
    images = images.reset_index(drop=True)
    groups = copy_groups(images["phash"], max_distance)
    sizes = np.bincount(groups)
    table = images.assign(group=groups)[sizes[groups] > 1]
    if table.empty:
        columns = ["group", "image_id", "split", "grade", "distance"] + (["dataset"] if "dataset" in images else [])
        return pd.DataFrame(columns=columns)
    # training copies first (the group's first member is the one its distances are to), then by id
    table = table.assign(_test=table["split"] != "train").sort_values(["group", "_test", "id"], kind="stable")
    bits = hash_bits(table["phash"])
    first = table.groupby("group").cumcount() == 0
    anchor = bits[np.flatnonzero(first)][np.cumsum(first.to_numpy()) - 1]
    table["distance"] = np.bitwise_count(bits ^ anchor).sum(axis=1)
    table["group"] = pd.factorize(table["group"])[0]
    table = table.rename(columns={"id": "image_id"})
    columns = ["group", "image_id", "split", "grade", "distance"] + (["dataset"] if "dataset" in table else [])
    return table[columns].reset_index(drop=True)


def conflicting(table: pd.DataFrame) -> pd.Series:
    """Per group of a duplicates table: whether its training copies carry different grades."""
    train = table[table["split"] == "train"]
    return train.groupby("group")["grade"].nunique() > 1


def summary(table: pd.DataFrame) -> str:
    """One line: groups, images, groups whose grades differ, train-test groups (and groups across datasets)."""
    splits = table.groupby("group")["split"].nunique()
    line = (f"{table['group'].nunique()} groups of copies ({len(table)} images), {int(conflicting(table).sum())} "
            f"with different grades, {int((splits > 1).sum())} across train and test")
    if "dataset" in table and table["dataset"].nunique() > 1:
        line += f", {int((table.groupby('group')['dataset'].nunique() > 1).sum())} across competitions"
    return line


def apply_policy(labels: pd.DataFrame, groups: np.ndarray, policy: str, numeric: bool) -> pd.DataFrame:
    """``labels`` (id, grade) with a ``group`` column, after the policy for groups whose grades differ: ``keep``
    every row, ``drop`` such groups, or ``merge`` every group into its first row graded by the majority (the
    rounded mean where the head learns numbers; ties go to the lower grade)."""
    if policy not in POLICIES:
        raise UserError(f"conflicting_grades '{policy}': use one of {', '.join(POLICIES)}")
    labels = labels.assign(group=groups)
    spread = labels.groupby("group")["grade"].transform("nunique")
    if policy == "drop":
        return labels[spread <= 1].reset_index(drop=True)
    if policy == "merge":
        grades = labels.groupby("group")["grade"]
        if numeric:
            merged = (grades.mean() + 0.5).astype(int)  # grades are not negative: floor(x + 0.5) rounds half up
        else:
            merged = grades.agg(lambda g: g.value_counts().sort_index().idxmax())
        first = labels.drop_duplicates("group", keep="first")
        return first.assign(grade=first["group"].map(merged).astype(int)).reset_index(drop=True)
    return labels.reset_index(drop=True)
