"""Training curves of a run: quality and loss against rounds and against bytes communicated.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so plotting needs no display
and leaves the caller's global backend alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_curves"]

_BYTES_PER_MB = 1e6


def _finite(value: Any) -> float | None:
    """The value as a float when it is a finite real number, else None (not evaluated)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _series(
    records: Sequence[dict[str, Any]], xs: Sequence[float], key: str
) -> tuple[list[float], list[float]]:
    """Points ``(x, record[key])`` of the records where ``key`` holds a finite number."""
    points = [(x, _finite(r.get(key))) for x, r in zip(xs, records, strict=True)]
    kept = [(x, y) for x, y in points if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def _draw(
    ax: Axes,
    records: Sequence[dict[str, Any]],
    xs: Sequence[float],
    lines: Sequence[tuple[str, str]],
    ylabel: str,
    xlabel: str,
) -> None:
    drawn = 0
    for key, label in lines:
        x, y = _series(records, xs, key)
        if x:
            ax.plot(x, y, marker="o", markersize=3, label=label)
            drawn += 1
    if drawn == 0:
        ax.text(0.5, 0.5, f"no {ylabel} logged", ha="center", va="center", transform=ax.transAxes)
    elif drawn > 1:
        ax.legend(fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _quality_key(records: Sequence[dict[str, Any]]) -> str:
    """``accuracy`` when any round logged it, else ``r2`` (regression tasks)."""
    for key in ("accuracy", "fed_accuracy_mean"):
        if any(_finite(r.get(key)) is not None for r in records):
            return "accuracy"
    return "r2"


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Write a 2x2 figure: quality and loss against round, and against cumulative MB sent.

    Quality is ``accuracy``, or ``r2`` when no record has accuracy. Federated means such as
    ``fed_accuracy_mean`` and ``fed_loss_mean`` are drawn as a second line. Rounds that were not
    evaluated (key missing, None or NaN) are left out rather than drawn as zero; their
    ``bytes_up`` and ``bytes_down`` still count toward the cumulative bytes.
    """
    ordered = sorted(records, key=lambda r: _finite(r.get("round")) or 0.0)
    rounds = [_finite(r.get("round")) or 0.0 for r in ordered]
    cumulative_mb: list[float] = []
    total = 0.0
    for r in ordered:
        total += (_finite(r.get("bytes_up")) or 0.0) + (_finite(r.get("bytes_down")) or 0.0)
        cumulative_mb.append(total / _BYTES_PER_MB)

    quality = _quality_key(ordered)
    quality_lines = [(quality, "global model"), (f"fed_{quality}_mean", "client mean")]
    loss_lines = [("loss", "global model"), ("fed_loss_mean", "client mean")]

    fig = Figure(figsize=(10, 7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    _draw(axes[0, 0], ordered, rounds, quality_lines, quality, "round")
    _draw(axes[0, 1], ordered, rounds, loss_lines, "loss", "round")
    _draw(axes[1, 0], ordered, cumulative_mb, quality_lines, quality, "cumulative MB (up + down)")
    _draw(axes[1, 1], ordered, cumulative_mb, loss_lines, "loss", "cumulative MB (up + down)")
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
