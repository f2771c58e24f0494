"""The whole pipeline for one config: data → preprocess → folds → train every fold → report, tune and predict →
submission; and the prediction stage that the pipeline and ``retinopathy predict`` share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .competitions import get_competition
from .config import Config
from .data.folds import TEST_OUTPUTS, make_folds
from .data.synthetic import SOLUTION, make_competition
from .errors import UserError
from .experiment import Experiment
from .inference.oof import cv_report, oof_screening, screening_report
from .inference.predict import predict_test
from .inference.tuning import tune_experiment, write_rule
from .launcher import train_side_by_side
from .metrics import GradeRule, quadratic_kappa
from .paths import Paths
from .preprocessing.stage import preprocess
from .reports.results import append_results, print_cv_report
from .training.train import fold_is_done, train_fold


@dataclass
class PipelineResult:
    """What one pipeline run produced."""

    cv: dict
    rule: GradeRule
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
    raise UserError(f"{raw}: no competition data; download it (retinopathy download --competition "
                    f"{config.competition}) or pass --raw-dir DIR")


def run_pipeline(config: Config, paths: Paths, folds: list[int] | None = None) -> PipelineResult:
    """Run every stage; stages whose outputs are up to date are skipped, so an interrupted run resumes."""
    start = time.time()
    experiment = Experiment(config, paths, tuple(folds) if folds is not None else None)
    ensure_raw_data(experiment)
    print(f"experiment '{config.name}': {experiment.competition.slug} data in {experiment.raw_dir}")
    preprocess(experiment)
    make_folds(experiment)
    todo = []
    for fold in folds if folds is not None else range(config.n_folds):
        if fold_is_done(experiment, fold):
            print(f"fold {fold}: up to date in {experiment.fold_dir(fold)}, skipped")
        else:
            todo.append(fold)
    if config.folds_at_once > 1 and len(todo) > 1:
        train_side_by_side(experiment, todo)
    else:
        for fold in todo:
            train_fold(experiment, fold, resume=True)  # an interrupted fold carries on from its last epoch
    cv, rule, submission, screening = report_and_predict(experiment)
    test_qwk = None
    solution = experiment.raw_dir / SOLUTION  # only synthetic competitions ship their answers
    if submission is not None and solution.is_file():
        comp = experiment.competition
        truth = pd.read_csv(solution, dtype={comp.id_column: str})
        mine = pd.read_csv(submission, dtype={comp.id_column: str})
        merged = truth.merge(mine, on=comp.id_column, suffixes=("_true", "_pred"))
        test_qwk = quadratic_kappa(merged[f"{comp.label_column}_pred"].to_numpy(), merged[f"{comp.label_column}_true"])
        print(f"test QWK against the synthetic competition's hidden answers: {test_qwk:.4f}")
        # the operating points keep the cut-offs chosen out of fold: the test set only measures them
        outputs = pd.read_csv(experiment.dir / TEST_OUTPUTS, dtype={"id": str})
        answers = truth.set_index(comp.id_column).loc[outputs["id"], comp.label_column].to_numpy()
        tested = screening_report(outputs["id"], experiment.head.outputs_of(outputs), answers, rule, comp,
                                  "test set", screening.cutoffs)
        print("\n".join(tested.lines()))
    seconds = time.time() - start
    print(f"done in {seconds:.0f}s. submission: {submission if submission else '(no test set)'}")
    return PipelineResult(cv, rule, submission, test_qwk, seconds)


def report_and_predict(experiment: Experiment, verbose: bool = True,
                       any_export: bool = False) -> tuple[dict, GradeRule, Path | None]:
    """The prediction stage: CV report, OOF tuning, the screening figures, the submission, and a row in the results
    table, from folds trained with this config's model settings (any trained fold with ``any_export``).
    Returns (CV report, the tuned grade rule, submission path or None, the OOF screening report)."""
    experiment.check_exports(any_export=any_export)
    cv = cv_report(experiment)
    print_cv_report(cv)
    rule = tune_experiment(experiment, verbose, write=False)  # written once, with the screening figures
    screening = oof_screening(experiment, rule)
    print("\n".join(screening.lines()))
    rule = rule.with_extra(**screening.columns())  # beside the rule: what the server's model card shows
    write_rule(experiment.dir, rule)
    submission = predict_test(experiment, verbose, any_export)
    table = append_results(experiment, cv, rule, submission, screening.columns())
    if verbose:
        print(f"results table: {table} (and results.md)")
    return cv, rule, submission, screening
