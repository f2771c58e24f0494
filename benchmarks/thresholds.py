"""Threshold tuning with every grade reachable, beside tuning for QWK alone, on the out-of-fold outputs of trained
regression experiments (each fold's ``oof.csv``) and, where the test images' labels are known, on their held-out
predictions (``test_outputs.csv``): the tuned QWK, how many images each rule grades 4, and grade-4 recall.

  python benchmarks/thresholds.py                      # the experiments benchmarks/duplicates.py trained
  python benchmarks/thresholds.py models/aptos_cpu --labels ../shared/data/aptos2019-224/train.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT = sorted((REPO / "benchmarks" / "out" / "duplicates" / "models").glob("dups-grouped-*"))
LABELS = REPO.parent / "shared" / "data" / "aptos2019-224" / "train.csv"


def measure(experiment: Path, labels: pd.Series | None) -> list[str]:
    """One line per rule: OOF tuned QWK, grade 4 given / carried, and on held-out images QWK and grade-4 recall."""
    from retinopathy.inference.tuning import MIN_SHARE, optimize_thresholds, unreachable_grades
    from retinopathy.metrics import cut, quadratic_kappa

    oof = pd.concat([pd.read_csv(f, dtype={"id": str}) for f in sorted(experiment.glob("fold*/oof.csv"))])
    values, grades = oof["value"].to_numpy(float), oof["grade"].to_numpy(int)
    test = pd.read_csv(experiment / "test_outputs.csv", dtype={"id": str}) if labels is not None else None
    if test is not None:
        test = test[test["id"].isin(labels.index)]
    lines = []
    for name, share in (("QWK alone", 0.0), (f"every grade reachable ({MIN_SHARE:.0%})", MIN_SHARE)):
        t = optimize_thresholds(values, grades, min_share=share)
        given = cut(values, t)
        line = (f"{experiment.name:<22} {name:<28} thresholds {' '.join(f'{x:.2f}' for x in t)} | OOF QWK "
                f"{quadratic_kappa(given, grades):.4f}, graded 4: {(given == 4).sum()} of {(grades == 4).sum()}, "
                f"unreachable {unreachable_grades(values, grades, t) or 'none'}")
        if test is not None and len(test):
            truth, held = labels.loc[test["id"]].to_numpy(int), cut(test["value"].to_numpy(float), t)
            line += (f" | held-out ({len(test)}) QWK {quadratic_kappa(held, truth):.4f}, grade-4 recall "
                     f"{(held[truth == 4] == 4).sum()}/{(truth == 4).sum()}")
        lines.append(line)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", type=Path, default=DEFAULT, help="models/<exp> folders (regression)")
    p.add_argument("--labels", type=Path, default=LABELS, help="id_code,diagnosis of the held-out images")
    args = p.parse_args()
    labels = None
    if args.labels.is_file():
        table = pd.read_csv(args.labels, dtype={"id_code": str})
        labels = table.set_index("id_code")["diagnosis"]
    if not args.experiments:
        raise SystemExit("no experiments: run benchmarks/duplicates.py first, or name models/<exp> folders")
    for experiment in args.experiments:
        for line in measure(experiment, labels):
            print(line)


if __name__ == "__main__":
    main()
