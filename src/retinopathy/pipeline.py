"""The whole pipeline for one config: data → preprocess → folds → train every fold → ensemble → submission."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .competitions import get_competition
from .config import Config
from .errors import UserError
from .experiment import Experiment
from .folds import make_folds
from .paths import Paths
from .predict import report_and_predict
from .preprocess import preprocess_dataset
from .synthetic import make_competition
from .train import fold_is_done, quadratic_kappa, train_fold


@dataclass
class PipelineResult:
    cv: dict
    tuning: dict
    submission: Path | None
    test_qwk: float | None
    seconds: float


def ensure_raw_data(experiment: Experiment) -> Path:
    """The competition folder; synthesized first when the config asks for a synthetic competition."""
    raw, config = experiment.raw_dir, experiment.config
    if raw.is_dir():
        return raw
    if config.synthetic_images > 0 and not config.raw_dir:
        print(f"data: synthesizing a {config.synthetic_images}-image competition in {raw}")
        make_competition(raw, get_competition(config.competition).slug, n_train=config.synthetic_images,
                         n_test=max(8, config.synthetic_images // 4), seed=config.seed,
                         max_side=max(256, 2 * config.image_size))
        return raw
    raise UserError(f"{raw}: no competition data; download it (python scripts/download.py --competition "
                    f"{config.competition}) or pass --raw-dir DIR")


def preprocess(experiment: Experiment, workers: int | None = None) -> pd.DataFrame:
    """The preprocessing stage for an experiment: cache every image once at its method and size."""
    config = experiment.config
    manifest = preprocess_dataset(experiment.raw_dir, experiment.processed_dir, config.preprocess, config.image_size,
                                  workers=workers)
    status = manifest["status"].str.split(":").str[0].value_counts()
    print(f"preprocess: {len(manifest)} images → {experiment.processed_dir} ("
          + ", ".join(f"{k}: {v}" for k, v in status.items()) + ")")
    return manifest


def run_pipeline(config: Config, paths: Paths, folds: list[int] | None = None) -> PipelineResult:
    """Run every stage; stages whose outputs are up to date are skipped, so an interrupted run resumes."""
    start = time.time()
    experiment = Experiment(config, paths)
    ensure_raw_data(experiment)
    print(f"experiment '{config.name}': {experiment.competition.slug} data in {experiment.raw_dir}")
    preprocess(experiment)
    make_folds(experiment)
    for fold in folds if folds is not None else range(config.n_folds):
        if fold_is_done(experiment, fold):
            print(f"fold {fold}: up to date in {experiment.fold_dir(fold)}, skipped")
            continue
        train_fold(experiment, fold, resume=True)  # an interrupted fold carries on from its last epoch
    cv, tuning, submission = report_and_predict(experiment)
    test_qwk = None
    solution = experiment.raw_dir / "solution.csv"  # only synthetic competitions ship their answers
    if submission is not None and solution.is_file():
        comp = experiment.competition
        truth = pd.read_csv(solution, dtype={comp.id_column: str})
        mine = pd.read_csv(submission, dtype={comp.id_column: str})
        merged = truth.merge(mine, on=comp.id_column, suffixes=("_true", "_pred"))
        test_qwk = quadratic_kappa(merged[f"{comp.label_column}_pred"].to_numpy(), merged[f"{comp.label_column}_true"])
        print(f"test QWK against the synthetic competition's hidden answers: {test_qwk:.4f}")
    seconds = time.time() - start
    print(f"done in {seconds:.0f}s. submission: {submission if submission else '(no test set)'}")
    return PipelineResult(cv, tuning, submission, test_qwk, seconds)
