"""What copies of a photograph do to cross-validation, on the real APTOS images: the folds as they were (copies split
across folds) beside grouped folds and each policy for copies whose grades differ, one pipeline per row, with the
pooled out-of-fold CV QWK (plain and tuned) and the held-out fifth's QWK (the fold ensemble, tuned thresholds).

  python benchmarks/duplicates.py                       # resnet10t from scratch, 96 px, 3 folds x 8 epochs
  python benchmarks/duplicates.py --size 128 --epochs 15 --rows grouped
  python benchmarks/duplicates.py --hashes-only         # the copies and the hash's margins, no training

The held-out fifth (stratified, seed 42) is split off with copies kept on one side, so no held-out image has a copy
among the training images. For the ungrouped folds it also prints the validation QWK on images with a copy in their
training folds beside the rest: how much of the old CV was a model's memory of a photograph.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "duplicates"
APTOS = REPO.parent / "shared" / "data" / "aptos2019-224"

#: the rows: (folds grouped?, conflicting_grades)
ROWS = {"ungrouped folds (copies split across folds), every copy kept": (False, "keep"),
        "grouped folds, every copy kept (keep)": (True, "keep"),
        "grouped folds, groups whose grades differ left out (drop)": (True, "drop"),
        "grouped folds, one row per group, its majority grade (merge)": (True, "merge")}


def examine(data: Path) -> pd.DataFrame:
    """id, phash, gradable of every labelled photograph (the same examination preprocessing makes)."""
    from retinopathy.competitions import APTOS2019
    from retinopathy.preprocessing.survey import survey_dataset

    return survey_dataset(data, APTOS2019, OUT / "photographs.csv")


def hash_margins(photos: pd.DataFrame) -> str:
    """How far apart the nearest other photograph lies, over all photographs: copies sit near 0, the rest far."""
    from retinopathy.data.duplicates import MAX_DISTANCE, hash_bits

    bits = hash_bits(photos["phash"])
    nearest = np.full(len(bits), 10**6)
    for start in range(0, len(bits), 512):
        chunk = bits[start:start + 512]
        distance = np.bitwise_count(chunk[:, None, :] ^ bits[None, :, :]).sum(axis=2)
        distance[np.arange(len(chunk)), start + np.arange(len(chunk))] = 10**6
        nearest[start:start + len(chunk)] = distance.min(axis=1)
    counts = np.histogram(nearest, bins=[0, 9, 33, MAX_DISTANCE + 1, 64, 257])[0]
    return (f"nearest other photograph: within 8 bits {counts[0]}, 9-32 {counts[1]}, 33-{MAX_DISTANCE} {counts[2]}, "
            f"{MAX_DISTANCE + 1}-63 {counts[3]}, 64 or more {counts[4]} (copies: within {MAX_DISTANCE})")


def held_out_split(labels: pd.DataFrame, groups: np.ndarray, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): a stratified fifth held out, every group of copies on one side."""
    from sklearn.model_selection import StratifiedGroupKFold

    _, test = next(StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(labels, labels["diagnosis"],
                                                                                 groups))
    held = np.zeros(len(labels), bool)
    held[test] = True
    return labels[~held].reset_index(drop=True), labels[held].reset_index(drop=True)


def competition_folder(train: pd.DataFrame, test: pd.DataFrame, data: Path) -> Path:
    """A Kaggle-layout folder of links: the training part labelled, the held-out part as the test set."""
    root = OUT / "aptos-grouped-heldout"
    shutil.rmtree(root, ignore_errors=True)
    for split, table in (("train_images", train), ("test_images", test)):
        (root / split).mkdir(parents=True)
        for i in table["id_code"]:
            (root / split / f"{i}.png").symlink_to(data / "train_images" / f"{i}.png")
    train.to_csv(root / "train.csv", index=False)
    test[["id_code"]].to_csv(root / "test.csv", index=False)
    test[["id_code"]].assign(diagnosis=0).to_csv(root / "sample_submission.csv", index=False)
    return root


def run_row(root: Path, test: pd.DataFrame, name: str, grouped: bool, policy: str, args) -> dict:
    """One pipeline on the held-out folder: its folds (grouped or not), every fold trained, CV and held-out QWK."""
    from retinopathy.config import load_config
    from retinopathy.data.folds import TEST_OUTPUTS, assign_folds, make_folds
    from retinopathy.experiment import Experiment
    from retinopathy.heads import get_head
    from retinopathy.metrics import quadratic_kappa
    from retinopathy.paths import Paths
    from retinopathy.pipeline import report_and_predict
    from retinopathy.preprocessing.stage import preprocess
    from retinopathy.training.train import train_fold

    config = load_config("aptos_cpu", [f"raw_dir={root}", f"image_size={args.size}", f"epochs={args.epochs}",
                                       f"n_folds={args.folds}", "tta=false", f"name={name}",
                                       f"conflicting_grades={policy}"])
    experiment = Experiment(config, Paths(data=OUT / "data", output=OUT))
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        preprocess(experiment)
        folds = make_folds(experiment, verbose=False)
        if not grouped:  # the folds as they were: stratified on the grade alone, blind to copies
            folds = assign_folds(folds[["id", "grade"]], config.n_folds, config.seed,
                                 experiment.competition).assign(group=folds["group"])
            folds.to_csv(experiment.folds_csv, index=False)
        for fold in range(config.n_folds):
            train_fold(experiment, fold, resume=True, verbose=False)
        cv, rule, *_ = report_and_predict(experiment, verbose=False)
    head = get_head(config.head)
    written = pd.read_csv(experiment.dir / TEST_OUTPUTS, dtype={"id": str})
    ids = written["id"].tolist()
    truth = test.set_index("id_code").loc[ids, "diagnosis"].to_numpy()
    result = {"cv": rule.extra["oof_qwk"], "cv_tuned": rule.extra["oof_qwk_tuned"], "n": rule.extra["n"],
              "held_out": quadratic_kappa(rule.grades(head.outputs_of(written), ids), truth),
              "minutes": (time.time() - start) / 60}
    if not grouped:  # validation images with a copy in their training folds, against the rest
        from retinopathy.inference.oof import load_oof, oof_outputs

        oof = load_oof(experiment).merge(folds[["id", "group"]], on="id")
        folds_of_group = folds.groupby("group")["fold"].nunique()
        leaked = oof["group"].map(folds_of_group) > 1
        grades = rule.grades(oof_outputs(oof, experiment.head), oof["id"].tolist())
        result["leaked"] = (int(leaked.sum()), quadratic_kappa(grades[leaked], oof["grade"][leaked]),
                            quadratic_kappa(grades[~leaked], oof["grade"][~leaked]))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=APTOS)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--rows", nargs="+", help="the start of a row's name (ungrouped, grouped)")
    p.add_argument("--hashes-only", action="store_true")
    args = p.parse_args()
    from retinopathy.data.duplicates import copy_groups, duplicates_table, summary

    OUT.mkdir(parents=True, exist_ok=True)
    labels = pd.read_csv(args.data / "train.csv", dtype={"id_code": str})
    photos = examine(args.data).set_index("id").loc[labels["id_code"]].reset_index()
    table = duplicates_table(photos.assign(grade=labels["diagnosis"].to_numpy())[["id", "split", "phash", "grade"]])
    print(f"{args.data}: {len(labels)} photographs; {summary(table)}")
    print(hash_margins(photos))
    if args.hashes_only:
        return
    groups = copy_groups(photos["phash"])
    train, test = held_out_split(labels, groups)
    root = competition_folder(train, test, args.data)
    print(f"{len(train)} training photographs, {len(test)} held out (no copy on both sides); resnet10t from scratch, "
          f"{args.size} px, {args.folds} folds x {args.epochs} epochs, no flips")
    lines = []
    for row, (grouped, policy) in ROWS.items():
        if args.rows and not any(row.startswith(w) for w in args.rows):
            continue
        slug = "dups-" + ("grouped-" if grouped else "ungrouped-") + policy
        r = run_row(root, test, slug, grouped, policy, args)
        line = (f"| {row} | {r['cv']:.3f} / {r['cv_tuned']:.3f} on {r['n']} | {r['held_out']:.3f} | "
                f"{r['minutes']:.1f} |")
        if "leaked" in r:
            n, with_copy, rest = r["leaked"]
            line += (f"\n|   of which: the {n} validation images with a copy in their training folds / the rest "
                     f"| {with_copy:.3f} / {rest:.3f} | | |")
        lines.append(line)
        print(line, flush=True)
    print("\n| row | pooled OOF CV QWK / tuned | held-out QWK (tuned) | minutes |\n|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
