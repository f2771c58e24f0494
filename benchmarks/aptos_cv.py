"""Cross-validated QWK on the real APTOS images, our recommended CPU recipe beside fastai's plain lesson-2 recipe,
in one run, with the time each took. No pretrained weights are reachable here, so both train from scratch at the
same architecture, image size and epochs.

  ours      configs/aptos_cpu.yaml through the pipeline: eye crop + Ben Graham's normalisation, stratified
            k folds, regression head with tuned thresholds, fundus augmentation, fold ensemble; the k-fold CV QWK
  lesson-2  ImageDataLoaders.from_df(valid_pct=0.2), vision_learner, fit_one_cycle, cross-entropy, plain resize,
            no preprocessing, no imbalance handling; QWK on its 20% validation split

  python benchmarks/aptos_cv.py                                  # the README's figures (about 1 h 15 min, 2 cores)
  python benchmarks/aptos_cv.py --folds 0 epochs=2 image_size=64 # a quick look (name=... keeps runs apart)
  python benchmarks/aptos_cv.py --only baseline

Outputs go under benchmarks/out/ (models, data caches), never into the source images' folder.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from retinopathy.config import load_config
from retinopathy.metrics import quadratic_kappa
from retinopathy.paths import Paths
from retinopathy.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "aptos2019-224"
OUT = REPO / "benchmarks" / "out"


def lesson2(raw: Path, arch: str, size: int, epochs: int, lr: float, bs: int, seed: int) -> dict:
    """fastai's lesson-2 way: a random 20% validation split, resize, cross-entropy, fit_one_cycle."""
    from fastai.vision.all import ImageDataLoaders, Resize, set_seed, vision_learner

    from retinopathy.training.models import resolve_arch

    set_seed(seed, reproducible=True)
    df = pd.read_csv(raw / "train.csv")
    df["fname"] = "train_images/" + df["id_code"] + ".png"
    dls = ImageDataLoaders.from_df(df, raw, fn_col="fname", label_col="diagnosis", valid_pct=0.2, seed=seed,
                                   item_tfms=Resize(size), bs=bs, num_workers=0)
    learn = vision_learner(dls, resolve_arch(arch), pretrained=False, path=OUT / "lesson2")
    learn.fit_one_cycle(epochs, lr)
    probs, targs = learn.get_preds(dl=dls.valid)
    vocab = np.array([int(v) for v in dls.vocab])  # labels as fastai sorted them
    grades = vocab[probs.numpy().argmax(1)]
    truth = vocab[targs.numpy()]
    return {"qwk": quadratic_kappa(grades, truth), "n": len(truth)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="APTOS folder (train.csv, train_images/)")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "aptos_cpu.yaml")
    p.add_argument("--folds", help="train only these folds of ours, e.g. 0 or 0,1 (default: all)")
    p.add_argument("--only", choices=["ours", "baseline"], help="run one side only")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to both sides (epochs, image_size...)")
    args = p.parse_args()

    config = load_config(args.config, list(args.overrides) + [f"raw_dir={args.images.resolve()}"])
    config = config.replace(dataset=args.images.name, synthetic_images=0)
    rows = []
    if args.only != "baseline":
        start = time.time()
        folds = [int(k) for k in args.folds.split(",")] if args.folds else None
        result = run_pipeline(config, Paths(data=OUT / "data", output=OUT), folds=folds)
        cv, tuned = result.cv, result.tuning["oof_qwk_tuned"]
        rows.append({"recipe": f"ours ({config.name})", "validation": f"{len(cv['folds'])}-fold CV ({cv['n']} images)",
                     "qwk": cv["pooled"], "qwk, tuned thresholds": tuned,
                     "qwk per fold": f"{cv['mean']:.3f} ± {cv['std']:.3f}", "minutes": (time.time() - start) / 60})
    if args.only != "ours":
        start = time.time()
        base = lesson2(args.images, config.arch, config.image_size, config.epochs, config.lr, config.batch_size,
                       config.seed)
        rows.append({"recipe": "fastai lesson 2", "validation": f"valid_pct=0.2 ({base['n']} images)",
                     "qwk": base["qwk"], "qwk, tuned thresholds": None, "qwk per fold": "",
                     "minutes": (time.time() - start) / 60})
    table = pd.DataFrame(rows)
    print(f"\narch {config.arch}, {config.image_size} px, {config.epochs} epochs, from scratch, {args.images}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if len(rows) == 2:
        print(f"QWK difference (ours - lesson 2): {rows[0]['qwk'] - rows[1]['qwk']:+.3f}")


if __name__ == "__main__":
    main()
