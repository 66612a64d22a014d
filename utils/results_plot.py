"""results.png: one small plot per numeric column of a training run's results.csv."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from utils.plots import new_figure, save_figure


def plot_results(csv_path: str | Path, save_path: str | Path | None = None) -> Path:
    """Plot every numeric column of ``results.csv`` except ``epoch`` against the epoch.

    Args:
        csv_path: results.csv written by train.py (one row per epoch; an ``epoch`` column is
            used as the x axis when present, else the row number).
        save_path: output image (default: ``results.png`` beside the CSV).

    Raises:
        ValueError: the CSV has no numeric column to plot.
    """
    csv_path = Path(csv_path)
    df = pd.read_csv(csv_path)
    df.columns = [str(c).strip() for c in df.columns]  # YOLOv5 pads headers with spaces
    x = df["epoch"] if "epoch" in df.columns else pd.Series(range(len(df)))
    cols = [c for c in df.columns if c != "epoch" and pd.api.types.is_numeric_dtype(df[c])]
    if not cols:
        raise ValueError(f"{csv_path} has no numeric column to plot")
    ncol = min(5, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig = new_figure((3.2 * ncol, 2.6 * nrow))
    for i, c in enumerate(cols):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        ax.plot(x, df[c], marker=".", linewidth=1.5, markersize=4)
        ax.set_title(c, fontsize=9)
        ax.tick_params(labelsize=7)
    return save_figure(fig, save_path if save_path is not None else csv_path.with_name("results.png"))
