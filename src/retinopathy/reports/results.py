"""The record of every run: the CV report printed, and one row per report in ``reports/results.csv`` and its
Markdown twin, with the scores, the config's main choices and the git commit."""

from __future__ import annotations

import html
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..experiment import Experiment
from ..files import locked, write_csv, write_text
from ..metrics import GRADES, GradeRule
from ..screening import Interval


def print_cv_report(cv: dict) -> None:
    """QWK per fold, mean ± std, pooled OOF QWK, and the pooled confusion matrix (rows: true grade)."""
    per_fold = ", ".join(f"fold {k}: {v:.4f}" for k, v in cv["folds"].items())
    print(f"CV QWK: {cv['mean']:.4f} ± {cv['std']:.4f} ({per_fold}); pooled out-of-fold QWK {cv['pooled']:.4f} "
          f"on {cv['n']} images")
    if "confusion" in cv:
        matrix = pd.DataFrame(cv["confusion"], index=[f"true {g}" for g in GRADES],
                              columns=[f"pred {g}" for g in GRADES])
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
           "fingerprint": config.fingerprint, "config": str(experiment.files.config),
           "submission": str(submission) if submission else "",
           "commit": git_commit()}
    csv_path = experiment.paths.reports / "results.csv"
    with locked(csv_path.with_name(".results.lock"), "reports/results.csv", wait=True):  # no row lost to a race
        table = read_results(csv_path)
        if len(table):  # a rerun of the same experiment and config replaces its row
            same = (table["experiment"] == row["experiment"]) & (table["fingerprint"] == row["fingerprint"])
            table = table[~same]
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        write_csv(table, csv_path)
        shown = table.drop(columns=["config"]).fillna("")
        lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
        lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in shown.itertuples(index=False)]
        write_text(experiment.paths.reports / "results.md",
                   "# Results\n\nOne row per experiment and config, newest last (`reports/results.csv` has the "
                   "config paths; `reports/index.html` compares them).\n\n" + "\n".join(lines) + "\n")
        write_comparison(table, experiment.paths.reports / "index.html")
    return csv_path


def read_results(csv_path: Path) -> pd.DataFrame:
    """The results table so far (empty where there is none), or one line saying it is not one."""
    if not csv_path.is_file():
        return pd.DataFrame()
    try:
        table = pd.read_csv(csv_path, dtype={"fingerprint": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        why = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        table = None
    else:
        missing = [c for c in ("experiment", "fingerprint", "config") if c not in table.columns]
        why = f"no {', '.join(missing)} column" if missing else ""
    if table is None or why:
        raise UserError(f"{csv_path}: not a results table ({why}): move it aside (a new one is started) and run "
                        "predict again; the submission and tuning are already written")
    return table


#: the comparison page's columns: (column of results.csv, heading)
COMPARED = [("date", "date"), ("competition", "competition"), ("arch", "arch"), ("size", "px"), ("head", "head"),
            ("folds", "folds"), ("oof_qwk_tuned", "CV QWK (tuned)"), ("referable_auc", "referable AUC"),
            ("referable_sensitivity", "referable sensitivity"), ("referable_specificity", "referable specificity")]


def write_comparison(table: pd.DataFrame, path: Path) -> Path:
    """Every experiment of the results table on one page, best CV QWK first: its main choices, CV QWK, referable
    DR AUC, sensitivity and specificity with their intervals, and a link to its interpretation report."""
    def cell(row, column: str) -> str:
        value = row.get(column)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "–"
        low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
        if column.startswith("referable_") and low is not None and not pd.isna(low):
            interval = Interval(float(value), float(low), float(high))
            return interval.plain() if column == "referable_auc" else interval.percent()
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    ranked = table.sort_values("oof_qwk_tuned", ascending=False, na_position="last")
    rows = []
    for _, row in ranked.iterrows():
        name = html.escape(str(row["experiment"]))
        report = path.parent / str(row["experiment"]) / "index.html"
        link = f'<a href="{name}/index.html">{name}</a>' if report.is_file() else name
        rows.append(f"<tr><td>{link}</td>" + "".join(f"<td>{html.escape(cell(row, c))}</td>" for c, _ in COMPARED)
                    + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["experiment", *(h for _, h in COMPARED)])
    return write_text(path, f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>experiments compared</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;white-space:nowrap}} th{{background:#f4f4f4}}</style></head><body>
<h1>Experiments compared</h1><p>One row per experiment and config (a rerun replaces its row), best out-of-fold QWK
first; referable DR is grade ≥ 2, with 95 % bootstrap intervals. A name links to its interpretation report
(retinopathy interpret).</p>
<table id="experiments"><tr>{head}</tr>{"".join(rows)}</table></body></html>
""")
