"""Plots a person reads at a glance, written as PNG files: training curves, the learning-rate finder's curve, ROC
curves with their operating points and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .files import atomic_path


def figure(*grid, figsize: tuple[float, float], layout: str | None = None, **options):
    """A matplotlib figure and its axes (``Figure.subplots``), drawn off-screen: no pyplot, no backend set for the
    process, nothing to close. ``layout="constrained"`` keeps labels and legends of neighbouring axes apart."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(*grid, **options)


def save_figure(fig, path: str | Path, dpi: int = 100, **savefig_options) -> Path:
    """A matplotlib figure as a PNG, written atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **savefig_options)
    return Path(path)


def draw_history(ax, history: pd.DataFrame, legend_size=None) -> None:
    """Train and valid loss (left axis) and validation QWK (right axis) per epoch on one matplotlib axis, the best
    epoch (highest QWK, the one kept) marked; the legend below the axis, off the curves."""
    epochs = np.arange(1, len(history) + 1)
    ax.plot(epochs, history["train_loss"], "o-", label="train loss")
    ax.plot(epochs, history["valid_loss"], "o-", label="valid loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, history["qwk"], "s--", color="tab:green", label="valid QWK")
    ax2.set_ylabel("QWK")
    ax2.set_ylim(min(0, float(np.nanmin(history["qwk"]))), 1)
    if len(history) and np.isfinite(history["qwk"]).any():
        best = int(np.nanargmax(history["qwk"].to_numpy(float))) + 1
        ax.axvline(best, color="0.4", linestyle=":", label=f"best epoch {best} (kept)")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=2, fontsize=legend_size, frameon=False)


def draw_rates(ax, rates: np.ndarray) -> None:
    """The learning rate of the head's parameter group at the end of each epoch (log scale)."""
    ax.plot(np.arange(1, len(rates) + 1), rates, ".-", color="tab:purple")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")


def plot_roc(curves: list[dict], path: Path, title: str) -> Path:
    """ROC curves (``label``, ``fpr``, ``tpr``) with their operating points (``points``: (name, fpr, tpr)) marked."""
    fig, ax = figure(figsize=(5.5, 5.5), layout="constrained")
    for curve, colour in zip(curves, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False):
        ax.plot(curve["fpr"], curve["tpr"], color=colour, label=curve["label"])
        for (name, fpr, tpr), marker in zip(curve["points"], "osD^", strict=False):
            ax.plot([fpr], [tpr], marker, color=colour, markersize=7, markerfacecolor="white",
                    label=f"{name}: {tpr:.0%} / {1 - fpr:.0%}")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":")
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_reliability(table: pd.DataFrame, ece: float, path: Path, title: str) -> Path:
    """The reliability diagram: accuracy against stated confidence per bin (bar width: the bin; the diagonal:
    perfect calibration), with how many images each bin holds."""
    fig, ax = figure(figsize=(5.5, 5), layout="constrained")
    ax.bar(table["low"], table["accuracy"], width=table["high"] - table["low"], align="edge", edgecolor="white",
           color="tab:blue", label="share right")
    ax.plot([0, 1], [0, 1], color="tab:red", linestyle="--", label="perfectly calibrated")
    for row in table.itertuples():
        ax.annotate(str(row.count), ((row.low + row.high) / 2, row.accuracy), ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("stated probability of the top grade")
    ax.set_ylabel("share of those images graded right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title} (expected calibration error {ece:.3f})", fontsize=10)
    return save_figure(fig, path)


def plot_history(history: pd.DataFrame, path: Path, title: str) -> Path:
    """Loss curves and validation QWK per epoch as one PNG."""
    fig, ax = figure(figsize=(7, 4.6), layout="constrained")
    draw_history(ax, history)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_lr_find(curve: pd.DataFrame, suggestion: float, path: Path, title: str) -> Path:
    """The learning-rate finder's loss against rate (log scale) with its suggestion marked, as one PNG."""
    fig, ax = figure(figsize=(6, 4))
    shown = curve.iloc[:-5] if len(curve) > 10 else curve  # the last points shoot up and flatten the plot
    ax.plot(shown["lr"], shown["loss"])
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"valley {suggestion:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
