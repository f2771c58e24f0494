"""Learn from the model's mistakes: ``reports/<exp>/index.html``, one offline page with a summary (CV QWK, the
screening figures with their intervals, a per-fold table, the thresholds), the ROC curve with its operating points,
the reliability diagram, every fold's training curves with one plain-language verdict, the confusion matrix with
per-grade precision and recall, and the most wrong and least sure images as tiles to click.

Everything comes from the out-of-fold predictions, so every training image is judged by a model that never saw it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.manifest import read_manifest_file
from ..errors import UserError
from ..experiment import Experiment
from ..files import locked, write_csv, write_text
from ..inference.oof import load_oof, oof_outputs
from ..inference.tuning import read_rule
from ..metrics import GRADE_NAMES, GRADES, quadratic_kappa
from ..plots import draw_history, figure, save_figure
from .results import read_results, write_comparison


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=90, bbox_inches="tight")


# ----------------------------------------------------------------------------------------- per-image losses
def oof_with_losses(experiment: Experiment) -> pd.DataFrame:
    """OOF rows with the predicted grade (post-processed as at prediction), each image's loss, and how sure the
    model was: the probability of its pick (classification) or the distance to the nearest threshold (regression)."""
    oof = load_oof(experiment)
    rule = read_rule(experiment)
    head = experiment.head
    grades = oof["grade"].to_numpy(int)
    outputs = oof_outputs(oof, head)
    oof["pred"] = rule.grades(outputs, oof["id"])
    if rule.use_values or not head.argmax_grade or head.grade_probabilities(outputs) is None:  # graded by a score
        values = rule.values(outputs, oof["id"])
        thresholds = np.asarray(rule.thresholds, float)
        oof["loss"] = np.abs(values - grades)
        oof["sureness"] = np.min(np.abs(values[:, None] - thresholds[None, :]), axis=1)
        oof["shown"] = [f"score {v:.2f}" for v in values]
    else:
        oof["loss"] = -np.log(np.clip(outputs[np.arange(len(oof)), grades], 1e-7, 1))
        oof["sureness"] = outputs.max(1)
        oof["shown"] = [f"p {p:.2f}" for p in outputs[np.arange(len(oof)), oof["pred"]]]
    manifest = read_manifest_file(experiment.processed_dir)
    return oof.merge(manifest[["id", "path"]], on="id", how="left")


def oof_overlays(experiment: Experiment, rows: pd.DataFrame, done=lambda: None) -> dict[str, np.ndarray]:
    """Grad-CAM overlays of out-of-fold images, each from the fold that held it out (through the Grader), for its
    predicted grade; ``done()`` is called after each image (a progress bar)."""
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
        done()
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
    """A practitioner's reading of one fold's curves in plain words: one verdict at most (empty means nothing
    alarming), so the advice never contradicts itself. In order, the first that holds:

    - a loss that is not finite, or a training loss that ends well above where it started → diverging;
    - validation loss rising (10 % above its best, at least 2 epochs after it) while training loss falls →
      over-fitting;
    - validation QWK swinging up and down by more than 0.1 between epochs in the second half → unstable;
    - validation loss still falling at the end (its best in the last two epochs, 5 % below where the last quarter
      began), or training loss above validation loss late in training while QWK still rises → under-fitting.
    """
    train, valid = history["train_loss"].to_numpy(float), history["valid_loss"].to_numpy(float)
    qwk = history["qwk"].to_numpy(float) if "qwk" in history else np.array([])
    n = len(history)
    if n == 0:
        return ["no epochs recorded"]
    if n < 3 and np.isfinite(train).all() and np.isfinite(valid).all():
        return [f"too short to judge: {n} epoch{'s' * (n > 1)} (the curves say something from about 3)"]
    if not (np.isfinite(train).all() and np.isfinite(valid).all()) or (n >= 2 and train[-1] > 1.5 * train[0]):
        return ["diverging: the loss blows up — the learning rate is too high; lower it (lr_find=plot shows where "
                "the loss still falls)"]
    best = int(np.argmin(valid))
    if n - 1 - best >= 2 and valid[-1] > 1.1 * valid[best] and train[-1] < train[best]:
        return [f"over-fitting: validation loss rising while training loss falls after epoch {best + 1} — use "
                "fewer epochs, or more regularisation (wd, ps, augmentation)"]
    signs = np.sign(np.diff(qwk[n // 2:])) if len(qwk) > 2 else np.array([])
    swings = np.abs(np.diff(qwk[n // 2:])) if len(qwk) > 2 else np.array([])
    if len(swings) >= 2 and (swings > 0.1).sum() >= 2 and (np.diff(signs) != 0).any():
        return ["unstable: validation QWK swinging up and down by more than 0.1 between epochs — lower the "
                "learning rate, or validate on more images (fewer folds)"]
    tail = slice(max(0, n - max(1, n // 4)), n)
    still_falling = n >= 3 and best >= n - 2 and valid[-1] < 0.95 * valid[max(0, n - 1 - max(2, n // 4))]
    train_above = (train[tail] > valid[tail]).all() and (len(qwk) < 2 or qwk[-1] >= np.nanmax(qwk[:-1]))
    if still_falling or train_above:
        why = ("validation loss still falling at the last epoch" if still_falling else
               "training loss above validation loss late in training, QWK still rising")
        return [f"under-fitting: {why} — train longer or raise the learning rate"]
    return []


def epoch_rates(experiment: Experiment, fold: int, history: pd.DataFrame) -> np.ndarray | None:
    """The head's learning rate at the end of each epoch, as fastai's one-cycle schedule set it in each phase (the
    config's rate, or the one lr_find picked); None where the history does not say its phases."""
    import json

    from fastai.callback.schedule import combined_cos

    from ..training.train import phases_of

    if "phase" not in history:
        return None
    picked = experiment.fold_files(fold).lr_find[2]
    chosen = json.loads(picked.read_text()).get("lr") if picked.is_file() else None
    rates = []
    for name, n_epochs, lr in phases_of(experiment.config):
        top = float(chosen or (lr.stop if isinstance(lr, slice) else lr))
        schedule = combined_cos(0.25, top / 25, top, top / 1e5)  # fit_one_cycle's defaults
        done = int((history["phase"] == name).sum())
        rates += [float(schedule((e + 1) / n_epochs)) for e in range(min(done, n_epochs))]
    return np.array(rates) if len(rates) == len(history) else None


def curves(experiment: Experiment, out: Path) -> dict[int, list[str]]:
    """One PNG with every fold's train/valid loss and QWK per epoch (the best epoch marked) above its learning
    rate; returns each fold's diagnosis."""
    from ..plots import draw_rates

    folds = [k for k in range(experiment.config.n_folds) if experiment.fold_files(k).history.is_file()]
    if not folds:
        raise UserError(f"no training history in {experiment.dir}: train a fold first")
    fig, axes = figure(2, len(folds), figsize=(5.2 * len(folds), 5.6), squeeze=False, layout="constrained",
                       gridspec_kw={"height_ratios": [3, 1]})
    verdicts = {}
    for column, fold in enumerate(folds):
        history = pd.read_csv(experiment.fold_files(fold).history)
        draw_history(axes[0, column], history, legend_size=8)
        verdicts[fold] = diagnose(history)
        axes[0, column].set_title(f"fold {fold}: " + (verdicts[fold][0].split(":")[0] if verdicts[fold]
                                                      else "healthy"), fontsize=10)
        rates = epoch_rates(experiment, fold, history)
        if rates is not None:
            draw_rates(axes[1, column], rates)
        else:
            axes[1, column].axis("off")
    _save(fig, out / "curves.png")
    return verdicts


# ----------------------------------------------------------------------------------------- screening figures
def roc_figure(experiment: Experiment, oof: pd.DataFrame, rule, screening, out: Path) -> Path:
    """ROC curves of the score for each condition (per image) with its operating points marked."""
    from sklearn.metrics import roc_curve

    from ..plots import plot_roc
    from ..screening import CONDITION_NAMES, CONDITIONS

    outputs = oof_outputs(oof, rule.head)
    scores, truth = rule.values(outputs, oof["id"]), oof["grade"].to_numpy(int)
    curves_ = []
    per_image = [r for r in screening.results if r.unit == "image"]
    for (condition, at_least), result in zip(CONDITIONS, per_image, strict=False):
        positive = truth >= at_least
        if not 0 < positive.sum() < len(positive):
            continue
        fpr, tpr, _ = roc_curve(positive, scores)
        points = [(p.name.split(" (")[0], 1 - p.specificity.value, p.sensitivity.value) for p in result.points]
        curves_.append({"label": f"{CONDITION_NAMES[condition]}: AUC {result.auc.value:.3f}", "fpr": fpr,
                        "tpr": tpr, "points": points})
    return plot_roc(curves_, out / "roc.png", f"{experiment.config.name}: out of fold, per image")


# ----------------------------------------------------------------------------------------- the page
def _img(path: Path, alt: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt or path.name)}">'


def _tile_source(image: np.ndarray) -> str:
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode()


def image_tiles(rows: pd.DataFrame, overlays: dict[str, np.ndarray] | None) -> str:
    """The images as HTML tiles: each the image the model saw (and its heat map), a caption a person can read
    (actual and predicted grade, loss, the score or probability), click to enlarge."""
    from ..preprocessing.image_io import read_prepared

    tiles = []
    for row in rows.itertuples():
        if not (isinstance(row.path, str) and row.path and Path(row.path).is_file()):
            continue
        pictures = [_tile_source(read_prepared([row.path])[0])]
        if overlays and row.id in overlays:
            pictures.append(_tile_source(overlays[row.id]))
        wrong = " wrong" if row.grade != row.pred else ""
        images = "".join(f'<img src="{src}" alt="{html.escape(str(row.id))}{" heat map" if k else ""}">'
                         for k, src in enumerate(pictures))
        tiles.append(f'<figure class="tile{wrong}" tabindex="0">{images}<figcaption><b>actual {row.grade} · '
                     f'predicted {row.pred}</b><br>loss {row.loss:.2f} · {html.escape(row.shown)}<br>'
                     f'<small>{html.escape(str(row.id))} (fold {row.fold})</small></figcaption></figure>')
    return f'<div class="tiles">{"".join(tiles)}</div>'


#: how to read the heat maps, on the report page
HEAT_MAP_HELP = """<p><b>Reading the heat maps.</b> Beside each image, its Grad-CAM from the fold that held it out:
the gradient of the predicted grade (a classifier's logit for that grade; a regression's value) with respect to the
last convolutional stage, drawn in red where that stage's features raised the prediction most, blue where they did
not. Look for red on lesions (haemorrhages, exudates, new vessels); red on the optic disc, a notch, a reflection or
the image's rim points at a shortcut the model learnt. The map is coarse: it has the stage's resolution (the input
size / 32) and is stretched to the image.</p>"""

#: the heat map's cells across (input size / 32) below which it shows nothing a person can read
HEAT_MAP_MIN_CELLS = 7

PAGE_STYLE = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%} table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.figures{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start} .figures>div{max-width:600px}
.summary{display:flex;gap:1.5em;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:8px;padding:.6em 1em}
.card b{font-size:1.6em;display:block}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{margin:0;border:1px solid #ddd;border-radius:6px;padding:6px;width:216px;cursor:zoom-in;background:#fff}
.tile img{width:100px;height:100px;image-rendering:pixelated;margin-right:4px}
.tile figcaption{font-size:13px;line-height:1.35}
.tile.wrong figcaption b{color:#b00}
.tile.enlarged{position:fixed;top:3vh;left:50%;transform:translateX(-50%);width:auto;max-width:94vw;z-index:10;
box-shadow:0 0 0 100vmax rgba(0,0,0,.6);cursor:zoom-out}
.tile.enlarged img{width:min(42vw,80vh);height:min(42vw,80vh)} .tile.enlarged figcaption{font-size:18px}
pre{background:#f4f4f4;padding:1em;overflow:auto} .note{color:#555}"""

PAGE_SCRIPT = """document.addEventListener("click", e => {
  const tile = e.target.closest(".tile"), open = document.querySelector(".tile.enlarged");
  if (open && open !== tile) open.classList.remove("enlarged");
  if (tile) tile.classList.toggle("enlarged");
});
document.addEventListener("keydown", e => {
  if (e.key === "Escape") document.querySelectorAll(".tile.enlarged").forEach(t => t.classList.remove("enlarged"));
});"""


def _table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if k >= numeric_from else ""}>{html.escape(str(v))}</td>'
                                    for k, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def fold_table(experiment: Experiment, oof: pd.DataFrame) -> str:
    """Per fold: its images, QWK by the tuned rule, the best epoch of how many, and the verdict on its curves."""
    rows = []
    for fold, part in oof.groupby("fold"):
        history_file = experiment.fold_files(int(fold)).history
        history = pd.read_csv(history_file) if history_file.is_file() else pd.DataFrame()
        best = f"{int(history['qwk'].to_numpy().argmax()) + 1} of {len(history)}" if len(history) else "–"
        rows.append([f"fold {fold}", len(part), f"{quadratic_kappa(part['pred'], part['grade']):.4f}", best])
    return _table(["fold", "images", "QWK (tuned rule)", "best epoch"], rows)


def screening_table(screening) -> str:
    """Every condition and operating point with its interval, as one table."""
    from ..screening import CONDITION_NAMES

    rows = []
    for result in screening.results:
        name = f"{CONDITION_NAMES[result.condition]}, per {result.unit} ({result.positives} of {result.n})"
        rows.append([name, "AUC", result.auc.plain(), ""])
        rows += [["", p.name, p.sensitivity.percent(), p.specificity.percent()] for p in result.points]
    return _table(["condition", "operating point", "sensitivity (AUC)", "specificity"], rows, numeric_from=2)


def interpret(experiment: Experiment, fold: int | None = None, top: int = 16, heat_maps: str = "auto",
              show: bool = True) -> Path:
    """Write ``reports/<exp>/`` (or only one fold's part with ``fold``) and return its HTML page: a summary (CV QWK,
    screening figures with intervals, per-fold table, thresholds), the ROC curve and reliability diagram, the
    training curves with one verdict per fold, the confusion matrix, and the most wrong and least sure images as
    tiles. ``heat_maps``: ``auto`` draws each shown image's Grad-CAM where the model's last stage is at least
    7 cells across (224 px and up), ``always`` or ``never``. Says each step (``show``)."""
    from ..inference.oof import oof_screening
    from ..plots import plot_reliability
    from ..progress import progress_bar, steps

    config = experiment.config
    cells = config.image_size // 32
    drawn = heat_maps == "always" or (heat_maps == "auto" and cells >= HEAT_MAP_MIN_CELLS)
    step = steps("interpret", 4 + drawn, show)
    out = experiment.paths.reports / config.name
    out.mkdir(parents=True, exist_ok=True)
    step("out-of-fold losses and screening figures")
    oof = every_fold = oof_with_losses(experiment)  # read once: the screening figures and the ROC take every fold
    rule = read_rule(experiment)
    screening = oof_screening(experiment, rule, oof=every_fold)
    if fold is not None:
        oof = oof[oof["fold"] == fold]
        if oof.empty:
            raise UserError(f"fold {fold} has no out-of-fold predictions in {experiment.dir}")
    scope = f"fold {fold}" if fold is not None else f"{oof['fold'].nunique()} fold(s)"
    worst = oof.sort_values("loss", ascending=False).head(top)
    unsure = oof.sort_values("sureness").head(top)
    write_csv(worst.drop(columns=["shown"]), out / "top_losses.csv")
    overlays = None
    if drawn:
        step("heat maps of the images shown")
        shown = pd.concat([worst, unsure]).drop_duplicates("id")
        with progress_bar(total=len(shown), desc="heat maps", unit="img", show=show) as bar:
            overlays = oof_overlays(experiment, shown, bar.update)
    step("confusion matrix, ROC curve and calibration")
    table, qwk = confusion_report(oof, out)
    roc_figure(experiment, every_fold, rule, screening, out)
    if screening.calibration is not None:
        plot_reliability(screening.calibration.table, screening.calibration.ece, out / "reliability.png",
                         f"{config.name}: out of fold")
    step("training curves")
    verdicts = curves(experiment, out)
    if fold is not None:
        verdicts = {k: v for k, v in verdicts.items() if k == fold}
    lr_plots = [experiment.fold_files(k).lr_find[0] for k in range(experiment.config.n_folds)
                if (fold is None or k == fold) and experiment.fold_files(k).lr_find[0].is_file()]

    step("the page")
    page = _page(experiment, oof, scope, rule, screening, table, qwk, verdicts, lr_plots,
                 (worst, unsure, overlays), _heat_map_note(config.image_size, drawn, heat_maps), out)
    written = write_text(out / "index.html", page)
    results = experiment.paths.reports / "results.csv"
    if results.is_file():  # the comparison page links to the reports that exist: this one now does
        with locked(results.with_name(".results.lock"), "reports/results.csv", wait=True):
            write_comparison(read_results(results), experiment.paths.reports / "index.html")
    return written


def _heat_map_note(size: int, drawn: bool, heat_maps: str) -> str:
    """What the page says of the heat maps: how to read them, or why there are none."""
    if drawn:
        return HEAT_MAP_HELP
    if heat_maps == "auto":
        cells = size // 32
        return (f'<p class="note">No heat maps: at {size} px the model\'s last stage is {cells} × {cells} cells, too '
                f"coarse to point at a lesion (they resolve from about {32 * HEAT_MAP_MIN_CELLS} px; --heat-maps "
                "always draws them anyway).</p>")
    return ""


def _summary(rule, screening, qwk: float) -> str:
    """The page's cards: CV QWK and the referable-DR figures."""
    referable = screening.results[0]
    tuned = rule.extra.get("oof_qwk_tuned")
    cards = [("CV QWK (pooled out of fold, tuned)", f"{tuned:.4f}" if tuned is not None else f"{qwk:.4f}"),
             ("referable DR AUC", referable.auc.plain()),
             ("referable sensitivity", referable.points[0].sensitivity.percent()),
             ("referable specificity", referable.points[0].specificity.percent())]
    return "".join(f'<div class="card">{html.escape(k)}<b>{html.escape(v)}</b></div>' for k, v in cards)


def _page(experiment: Experiment, oof: pd.DataFrame, scope: str, rule, screening, table: pd.DataFrame, qwk: float,
          verdicts: dict, lr_plots: list[Path], shown: tuple, heat_map_note: str, out: Path) -> str:
    """The report's HTML, from the figures already drawn in ``out`` and the images ``shown`` (most wrong, least
    sure, their heat maps)."""
    config = experiment.config
    worst, unsure, overlays = shown
    config_path = experiment.files.config
    config_text = config_path.read_text() if config_path.is_file() else config.to_yaml()
    diagnosis = "".join(f"<li><b>fold {k}</b>: {html.escape(v[0] if v else 'healthy: nothing alarming')}</li>"
                        for k, v in verdicts.items())
    thresholds = (", ".join(f"{t:.3f}" for t in rule.thresholds) if rule.use_values else
                  "none: the head's own grade") + (f"; eye blend {rule.eye_blend:.2f}" if rule.eye_blend else "")
    reliability = (f"<h3>Calibration</h3><p>{html.escape(screening.calibration.line())}</p>"
                   + _img(out / "reliability.png", "reliability diagram")) if screening.calibration else (
        '<p class="note">No calibration: this head states no probabilities.</p>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(config.name)}: interpretation</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>{html.escape(config.name)}</h1>
<p>{html.escape(experiment.competition.slug)}, {config.arch} at {config.image_size} px, {config.head} head,
{scope}, {len(oof)} out-of-fold images (each judged by the fold that never saw it); thresholds {thresholds}.</p>
<div class="summary" id="summary">{_summary(rule, screening, qwk)}</div>
<h2>Folds</h2>{fold_table(experiment, oof)}
<h2>Screening</h2><p>Sensitivity and specificity with 95 % bootstrap intervals at the tuned grade rule and at the
cut-offs on the score that reach 90 % and 95 % sensitivity out of fold.</p>{screening_table(screening)}
<div class="figures"><div>{_img(out / "roc.png", "ROC curve")}</div><div>{reliability}</div></div>
<h2>Training curves</h2><ul id="diagnosis">{diagnosis}</ul>{_img(out / "curves.png", "training curves")}
{"".join(f"<h3>lr_find, {p.parent.name}</h3>" + _img(p) for p in lr_plots)}
<h2>Confusion matrix</h2>{_img(out / "confusion_matrix.png", "confusion matrix")}
{table.to_html(index=False)}
<h2>Most wrong</h2><p>The images the model was most wrong about (red caption: wrong grade). Click one to
enlarge it; Escape closes it.</p>{heat_map_note}
<div id="top-losses">{image_tiles(worst, overlays)}</div>
<h2>Least sure</h2><div id="least-sure">{image_tiles(unsure, overlays)}</div>
<h2>Config</h2><pre>{html.escape(config_text)}</pre>
<script>{PAGE_SCRIPT}</script>
</body></html>
"""
