"""Plots a person reads at a glance, written as PNG files: training curves and the learning-rate finder's curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .files import atomic_path


def figure(*grid, figsize: tuple[float, float], **options):
    """A matplotlib figure and its axes (``Figure.subplots``), drawn off-screen: no pyplot, no backend set for the
    process, nothing to close."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **options)


def save_figure(fig, path: str | Path, dpi: int = 100, **savefig_options) -> Path:
    """A matplotlib figure as a PNG, written atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **savefig_options)
    return Path(path)


def draw_history(ax, history: pd.DataFrame, legend_size=None) -> None:
    """Train and valid loss (left axis) and validation QWK (right axis) per epoch on one matplotlib axis."""
    epochs = np.arange(1, len(history) + 1)
    ax.plot(epochs, history["train_loss"], "o-", label="train loss")
    ax.plot(epochs, history["valid_loss"], "o-", label="valid loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, history["qwk"], "s--", color="tab:green", label="valid QWK")
    ax2.set_ylabel("QWK")
    ax2.set_ylim(min(0, float(np.nanmin(history["qwk"]))), 1)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=legend_size)


def plot_history(history: pd.DataFrame, path: Path, title: str) -> Path:
    """Loss curves and validation QWK per epoch as one PNG."""
    fig, ax = figure(figsize=(7, 4))
    draw_history(ax, history)
    ax.set_title(title)
    fig.tight_layout()
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
