"""The record of every run: the CV report printed, and one row per report in ``reports/results.csv`` and its
Markdown twin, with the scores, the config's main choices and the git commit."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pandas as pd

from ..experiment import Experiment
from ..files import locked, write_csv, write_text
from ..metrics import GRADES, GradeRule


def print_cv_report(cv: dict) -> None:
    """QWK per fold, mean ± std, pooled OOF QWK, and the pooled confusion matrix (rows: true grade)."""
    per_fold = ", ".join(f"fold {k}: {v:.4f}" for k, v in cv["folds"].items())
    print(f"CV QWK: {cv['mean']:.4f} ± {cv['std']:.4f} ({per_fold}); pooled out-of-fold QWK {cv['pooled']:.4f} "
          f"on {cv['n']} images")
    if "confusion" in cv:
        matrix = pd.DataFrame(cv["confusion"], index=[f"true {g}" for g in GRADES], columns=[f"pred {g}" for g in GRADES])
        print("out-of-fold confusion matrix:\n" + matrix.to_string())


def git_commit(where: Path | None = None) -> str:
    """The checkout's commit (with ``-dirty`` when files differ from it), or ``unknown`` outside git."""
    where = where or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def append_results(experiment: Experiment, cv: dict, rule: GradeRule | None, submission: Path | None,
                   screening: dict | None = None) -> Path:
    """One row per report in ``reports/results.csv`` and its Markdown twin ``reports/results.md``: scores (and
    the ``screening`` columns: referable DR sensitivity, specificity and AUC with their bounds), the config's main
    choices, where the full config is, and the git commit, so any submission can be traced."""
    config = experiment.config
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "experiment": config.name,
           "competition": experiment.competition.slug, "dataset": config.dataset_name,
           "folds": f"{len(cv['folds'])}/{config.n_folds}", "cv_qwk_mean": round(cv["mean"], 4),
           "cv_qwk_std": round(cv["std"], 4), "oof_qwk": round(cv["pooled"], 4),
           "oof_qwk_tuned": round(rule.extra["oof_qwk_tuned"], 4) if rule and "oof_qwk_tuned" in rule.extra else None,
           **(screening or {}),
           "arch": config.arch, "size": config.image_size, "preprocess": config.preprocess, "head": config.head,
           "balance": config.balance, "epochs": config.epochs, "lr": config.lr,
           "fingerprint": config.fingerprint, "config": str(experiment.dir / "config.yaml"),
           "submission": str(submission) if submission else "",
           "commit": git_commit()}
    csv_path = experiment.paths.reports / "results.csv"
    with locked(csv_path.with_name(".results.lock"), "reports/results.csv", wait=True):  # no row lost to a race
        table = pd.read_csv(csv_path) if csv_path.is_file() else pd.DataFrame()
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        write_csv(table, csv_path)
        shown = table.drop(columns=["config"]).fillna("")
        lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
        lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in shown.itertuples(index=False)]
        write_text(experiment.paths.reports / "results.md",
                   "# Results\n\nEvery CV report, newest last (`reports/results.csv` has the config paths).\n\n"
                   + "\n".join(lines) + "\n")
    return csv_path
