"""Learn from the model's mistakes: ``reports/<exp>/`` with the top losses, the confusion matrix, per-grade
precision and recall, every fold's training curves with a plain-language diagnosis, and one offline HTML page.

Everything comes from the out-of-fold predictions, so every training image is judged by a model that never saw it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..experiment import Experiment
from ..inference.oof import load_oof, oof_outputs
from ..heads import get_head
from ..inference.tuning import read_rule
from ..files import write_csv, write_text
from ..metrics import GRADE_NAMES, GRADES, quadratic_kappa
from ..plots import draw_history, figure, save_figure


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=90, bbox_inches="tight")


# ----------------------------------------------------------------------------------------- per-image losses
def oof_with_losses(experiment: Experiment) -> pd.DataFrame:
    """OOF rows with the predicted grade (post-processed as at prediction), each image's loss, and how sure the
    model was: the probability of its pick (classification) or the distance to the nearest threshold (regression)."""
    oof = load_oof(experiment)
    rule = read_rule(experiment)
    head = get_head(experiment.config.head)
    grades = oof["grade"].to_numpy(int)
    outputs = oof_outputs(oof, head.name)
    oof["pred"] = rule.grades(outputs, oof["id"])
    if rule.use_values or head.cuts_scores or head.grade_probabilities(outputs) is None:  # graded by its score
        values = rule.values(outputs, oof["id"])
        thresholds = np.asarray(rule.thresholds, float)
        oof["loss"] = np.abs(values - grades)
        oof["sureness"] = np.min(np.abs(values[:, None] - thresholds[None, :]), axis=1)
        oof["shown"] = [f"score {v:.2f}" for v in values]
    else:
        oof["loss"] = -np.log(np.clip(outputs[np.arange(len(oof)), grades], 1e-7, 1))
        oof["sureness"] = outputs.max(1)
        oof["shown"] = [f"p {p:.2f}" for p in outputs[np.arange(len(oof)), oof["pred"]]]
    manifest = pd.read_csv(experiment.manifest_csv, dtype={"id": str}, keep_default_na=False)
    return oof.merge(manifest[["id", "path"]], on="id", how="left")


def image_grid(rows: pd.DataFrame, path: Path, title: str, columns: int = 4,
               overlays: dict[str, np.ndarray] | None = None) -> Path:
    """The preprocessed images the model saw, each titled with actual and predicted grade, loss and probability;
    with ``overlays`` (id → heat map drawn over the image), each image beside its overlay."""
    from PIL import Image

    n = max(1, len(rows))
    per_image = 2 if overlays else 1
    nrows = int(np.ceil(n / columns))
    fig, axes = figure(nrows, columns * per_image, figsize=(3 * columns * per_image, 3.3 * nrows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    cells = axes.reshape(nrows, columns, per_image).reshape(-1, per_image)
    for cell, row in zip(cells, rows.itertuples()):
        if isinstance(row.path, str) and row.path and Path(row.path).is_file():
            with Image.open(row.path) as im:
                cell[0].imshow(np.asarray(im.convert("RGB")))
        if overlays and row.id in overlays:
            cell[1].imshow(overlays[row.id])
            cell[1].set_title("where it looked", fontsize=8)
        cell[0].set_title(f"{row.id}\nactual {row.grade} / predicted {row.pred}\nloss {row.loss:.2f} / {row.shown}",
                          fontsize=8, color="tab:red" if row.grade != row.pred else "black")
    fig.suptitle(title)
    return _save(fig, path)


def oof_overlays(experiment: Experiment, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Grad-CAM overlays of out-of-fold images, each from the fold that held it out (through the Grader), for its
    predicted grade."""
    from ..inference.explain import overlay
    from ..inference.grader import Grader
    from ..preprocessing.image_io import read_prepared

    graders, out = {}, {}
    for row in rows.itertuples():
        if not (isinstance(row.path, str) and row.path and Path(row.path).is_file()):
            continue
        if row.fold not in graders:
            graders[row.fold] = Grader.of_experiment(experiment, folds=[int(row.fold)], device="cpu")
        image = read_prepared([row.path])[0]
        out[row.id] = overlay(image, graders[row.fold].explanation(image, int(row.pred)))
    return out


# ----------------------------------------------------------------------------------------- confusion matrix
def confusion_report(oof: pd.DataFrame, out: Path) -> tuple[pd.DataFrame, float]:
    """Confusion matrix PNG (counts and row-normalised) and per-grade precision / recall / support."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, precision_recall_fscore_support

    labels = list(GRADES)
    truth, pred = oof["grade"].astype(int), oof["pred"].astype(int)
    counts = confusion_matrix(truth, pred, labels=labels)
    fig, axes = figure(1, 2, figsize=(12, 5))
    ConfusionMatrixDisplay(counts, display_labels=labels).plot(ax=axes[0], colorbar=False, cmap="Blues")
    axes[0].set_title("counts")
    normalised = confusion_matrix(truth, pred, labels=labels, normalize="true")
    ConfusionMatrixDisplay(normalised, display_labels=labels).plot(ax=axes[1], colorbar=False, cmap="Blues",
                                                                   values_format=".2f")
    axes[1].set_title("share of each true grade (rows sum to 1)")
    for ax in axes:
        ax.set_xlabel("predicted grade")
        ax.set_ylabel("true grade")
    qwk = quadratic_kappa(pred.to_numpy(), truth.to_numpy())
    fig.suptitle(f"out-of-fold confusion matrix, {len(oof)} images, QWK {qwk:.4f}")
    _save(fig, out / "confusion_matrix.png")
    precision, recall, f1, support = precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0)
    table = pd.DataFrame({"grade": labels, "name": [GRADE_NAMES[g] for g in labels], "precision": precision.round(3),
                          "recall": recall.round(3), "f1": f1.round(3), "support": support})
    write_csv(table, out / "per_grade.csv")
    return table, qwk


# ----------------------------------------------------------------------------------------- curves and diagnosis
def diagnose(history: pd.DataFrame) -> list[str]:
    """A practitioner's reading of one fold's curves, in plain words (empty means nothing alarming).

    - a loss that is not finite, or a training loss that ends well above where it started → learning rate too high;
    - training loss above validation loss over the last quarter of training → under-fitting;
    - validation loss rising (10 % above its best, at least 2 epochs after it) while training loss falls, or QWK
      swinging up and down by more than 0.1 between epochs → over-fitting.
    """
    train, valid = history["train_loss"].to_numpy(float), history["valid_loss"].to_numpy(float)
    qwk = history["qwk"].to_numpy(float) if "qwk" in history else np.array([])
    n = len(history)
    if n == 0:
        return ["no epochs recorded"]
    verdicts = []
    if not (np.isfinite(train).all() and np.isfinite(valid).all()) or (n >= 2 and train[-1] > 1.5 * train[0]):
        return ["diverging: the loss blows up — the learning rate is too high; lower it (lr_find=plot shows where "
                "the loss still falls)"]
    tail = slice(max(0, n - max(1, n // 4)), n)
    if (train[tail] > valid[tail]).all():
        verdicts.append("under-fitting: the training loss stays above the validation loss late in training — "
                        "train longer or raise the learning rate")
    best = int(np.argmin(valid))
    rising = n - 1 - best >= 2 and valid[-1] > 1.1 * valid[best] and train[-1] < train[best]
    swings = np.abs(np.diff(qwk[n // 2:])) if len(qwk) > 2 else np.array([])
    signs = np.sign(np.diff(qwk[n // 2:])) if len(qwk) > 2 else np.array([])
    swinging = len(swings) >= 2 and (swings > 0.1).sum() >= 2 and (np.diff(signs) != 0).any()
    if rising or swinging:
        why = "validation loss rising while training loss falls" if rising else "QWK swinging up and down"
        verdicts.append(f"over-fitting: {why} — use fewer epochs, or more regularisation (wd, ps, augmentation)")
    return verdicts


def curves(experiment: Experiment, out: Path) -> dict[int, list[str]]:
    """One PNG with every fold's train/valid loss and QWK per epoch; returns each fold's diagnosis."""
    folds = [k for k in range(experiment.config.n_folds) if (experiment.fold_dir(k) / "history.csv").is_file()]
    if not folds:
        raise UserError(f"no training history in {experiment.dir}: train a fold first")
    fig, axes = figure(1, len(folds), figsize=(5 * len(folds), 4), squeeze=False)
    verdicts = {}
    for ax, fold in zip(axes[0], folds):
        history = pd.read_csv(experiment.fold_dir(fold) / "history.csv")
        draw_history(ax, history, legend_size=8)
        verdicts[fold] = diagnose(history)
        ax.set_title(f"fold {fold}: " + ("; ".join(v.split(":")[0] for v in verdicts[fold]) or "healthy"), fontsize=10)
    _save(fig, out / "curves.png")
    return verdicts


# ----------------------------------------------------------------------------------------- the page
def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


#: how to read the heat maps, on the report page
HEAT_MAP_HELP = """<p><b>Reading the heat maps.</b> Beside each image, its Grad-CAM from the fold that held it out:
the gradient of the predicted grade (a classifier's logit for that grade; a regression's value) with respect to the
last convolutional stage, drawn in red where that stage's features raised the prediction most, blue where they did
not. Look for red on lesions (haemorrhages, exudates, new vessels); red on the optic disc, a notch, a reflection or
the image's rim points at a shortcut the model learnt. The map is coarse: it has the stage's resolution (the input
size / 32) and is stretched to the image.</p>"""


def interpret(experiment: Experiment, fold: int | None = None, top: int = 16, heat_maps: bool = True) -> Path:
    """Write ``reports/<exp>/`` (or only one fold's part with ``fold``) and return its HTML page; ``heat_maps``
    draws each shown image's Grad-CAM beside it."""
    out = experiment.paths.reports / experiment.config.name
    out.mkdir(parents=True, exist_ok=True)
    oof = oof_with_losses(experiment)
    if fold is not None:
        oof = oof[oof["fold"] == fold]
        if oof.empty:
            raise UserError(f"fold {fold} has no out-of-fold predictions in {experiment.dir}")
    scope = f"fold {fold}" if fold is not None else f"{oof['fold'].nunique()} fold(s)"
    worst = oof.sort_values("loss", ascending=False).head(top)
    unsure = oof.sort_values("sureness").head(top)
    overlays = oof_overlays(experiment, pd.concat([worst, unsure]).drop_duplicates("id")) if heat_maps else None
    image_grid(worst, out / "top_losses.png", f"{experiment.config.name}: most wrong ({scope}, highest loss first)",
               overlays=overlays)
    image_grid(unsure, out / "least_sure.png", f"{experiment.config.name}: least sure ({scope})", overlays=overlays)
    write_csv(worst.drop(columns=["shown"]), out / "top_losses.csv")
    table, qwk = confusion_report(oof, out)
    verdicts = curves(experiment, out)
    if fold is not None:
        verdicts = {k: v for k, v in verdicts.items() if k == fold}
    lr_plots = sorted(p for p in experiment.dir.glob("fold*/lr_find.png")
                      if fold is None or p.parent.name == f"fold{fold}")

    heat_map_help = HEAT_MAP_HELP if heat_maps else ""
    config_path = experiment.dir / "config.yaml"
    config_text = config_path.read_text() if config_path.is_file() else experiment.config.to_yaml()
    diagnosis = "".join(f"<li><b>fold {k}</b>: {html.escape('; '.join(v) or 'healthy: nothing alarming')}</li>"
                        for k, v in verdicts.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(experiment.config.name)}: interpretation</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
img{{max-width:100%}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head><body>
<h1>{html.escape(experiment.config.name)}</h1>
<p>{html.escape(experiment.competition.slug)}, {scope}, {len(oof)} out-of-fold images, QWK {qwk:.4f}.</p>
<h2>Training curves</h2><ul>{diagnosis}</ul>{_img(out / "curves.png")}
{"".join(f"<h3>lr_find, {p.parent.name}</h3>" + _img(p) for p in lr_plots)}
<h2>Confusion matrix</h2>{_img(out / "confusion_matrix.png")}
{table.to_html(index=False)}
<h2>Top losses</h2><p>The images the model was most wrong about (red: wrong grade).</p>{heat_map_help}
{_img(out / "top_losses.png")}
<h2>Least sure</h2>{_img(out / "least_sure.png")}
<h2>Config</h2><pre>{html.escape(config_text)}</pre>
</body></html>
"""
    return write_text(out / "index.html", page)
