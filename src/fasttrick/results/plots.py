"""The post's figures for a grid: one metric per epoch with every run overlaid (val acc, train loss),
and the lr each run trained with (log scale).

Each function takes ``{legend label: metrics rows}`` (rows as in a run's metrics.jsonl) and the grid's
name for the title, and returns a matplotlib Figure drawn on the Agg canvas: no display, no pyplot
global state, so a caller can inspect the Figure (tests count its lines) or render it with `png_bytes`. Non-finite values (a diverged run)
are left out of the line, and the epoch a run first went non-finite gets a dotted vertical line in the
run's colour, so the divergence stays visible even when the values before it are off the chart.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..runfiles import finite
from .diagnosis import THRESHOLDS

Curves = Mapping[str, Sequence[Mapping[str, Any]]]

# A training loss above the diagnosis's diverged threshold (2 ln 10) is a run blowing up, and letting it set
# the y range would flatten every healthy curve.
LOSS_CEILING = THRESHOLDS.diverged_loss
# Matplotlib's default cycle has 10 colours; past 10 runs the line style changes instead, so two runs
# never share both colour and style.
LINE_STYLES = ("-", "--", ":", "-.")
FIGURE_SIZE = (7.0, 4.5)
DPI = 120


def val_acc_figure(curves: Curves, grid_name: str | None = None) -> Figure:
    """Validation accuracy (%) per epoch, runs overlaid."""
    fig, ax = _overlay(curves, "val_acc", scale=100.0)
    ax.set(ylabel="validation accuracy (%)", title=_title("Validation accuracy", grid_name))
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 100.0))
    return fig


def train_loss_figure(curves: Curves, grid_name: str | None = None) -> Figure:
    """Training loss (mean over the epoch) per epoch, runs overlaid; y range capped at `LOSS_CEILING`."""
    fig, ax = _overlay(curves, "train_loss")
    ax.set(ylabel="training loss", title=_title("Training loss", grid_name))
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, LOSS_CEILING))
    return fig


def lr_figure(curves: Curves, grid_name: str | None = None) -> Figure:
    """Learning rate per epoch on a log scale (an lr of 0, e.g. cosine's end, is masked)."""
    fig, ax = _overlay(curves, "lr")
    ax.set_yscale("log", nonpositive="mask")
    ax.set(ylabel="learning rate", title=_title("Learning rate", grid_name))
    return fig


FIGURES = {"val_acc": val_acc_figure, "train_loss": train_loss_figure, "lr": lr_figure}


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as a PNG file's bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _overlay(curves: Curves, key: str, scale: float = 1.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGURE_SIZE, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for index, (label, rows) in enumerate(curves.items()):
        epochs = [row["epoch"] for row in rows]
        values = [math.nan if (value := finite(row.get(key))) is None else value * scale for row in rows]
        if not any(math.isfinite(v) for v in values):
            continue  # nothing to draw yet (a pending run, or diverged in its first epoch)
        (line,) = ax.plot(epochs, values, LINE_STYLES[index // 10 % len(LINE_STYLES)], label=label, linewidth=1.5)
        first_bad = next((epoch for epoch, v in zip(epochs, values, strict=True) if not math.isfinite(v)), None)
        if first_bad is not None:
            ax.axvline(first_bad, color=line.get_color(), linestyle=":", linewidth=1.0, label="_nolegend_")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small", ncol=2 if len(curves) > 8 else 1)
    return fig, ax


def _title(what: str, grid_name: str | None) -> str:
    return f"{what}: {grid_name}" if grid_name else what
