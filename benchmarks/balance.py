"""Class-imbalance handling measured side by side on the real APTOS images: balance none | sampler | loss, the same
folds, architecture, size and epochs, from scratch. Prints the pooled out-of-fold QWK, accuracy, and the recall of
each grade (the rare grades 1, 3 and 4 are where imbalance handling should show).

  python benchmarks/balance.py                         # classification, 64 px, 6 epochs, folds 0 and 1 of 5
  python benchmarks/balance.py --folds 0 epochs=3 head=regression
"""

import argparse
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import recall_score

from retinopathy.config import load_config
from retinopathy.experiment import Experiment
from retinopathy.inference.oof import load_oof, oof_outputs
from retinopathy.metrics import GradeRule, quadratic_kappa
from retinopathy.paths import Paths
from retinopathy.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "aptos2019-224"
OUT = REPO / "benchmarks" / "out"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--folds", default="0,1", help="folds of 5 to train (default 0,1)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    folds = [int(k) for k in args.folds.split(",")]
    base = ["head=classification", "image_size=64", "epochs=6", "n_folds=5", "balance_alpha=0.5"]
    rows = []
    for mode in ("none", "sampler", "loss"):
        config = load_config(REPO / "configs" / "aptos_cpu.yaml",
                             base + list(args.overrides) + [f"balance={mode}", f"name=balance-{mode}",
                                                            f"raw_dir={args.images.resolve()}"])
        config = config.replace(dataset=args.images.name, synthetic_images=0)
        paths = Paths(data=OUT / "data", output=OUT)
        start = time.time()
        run_pipeline(config, paths, folds=folds)
        experiment = Experiment(config, paths, tuple(folds))
        oof = load_oof(experiment)
        pred = GradeRule.plain(experiment.head).grades(oof_outputs(oof, experiment.head))
        truth = oof["grade"].to_numpy()
        recall = recall_score(truth, pred, labels=list(range(5)), average=None, zero_division=0)
        rows.append({"balance": mode, "OOF QWK": quadratic_kappa(pred, truth),
                     "accuracy": float((pred == truth).mean()),
                     **{f"recall {g}": r for g, r in enumerate(recall)}, "minutes": (time.time() - start) / 60})
    print(f"\n{config.head}, {config.arch}, {config.image_size} px, {config.epochs} epochs, folds {folds} of 5, "
          f"balance_alpha {config.balance_alpha}, {args.images}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
