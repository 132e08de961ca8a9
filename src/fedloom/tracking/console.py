"""Terminal output of a run: a progress bar per round and a closing summary table.

On an interactive terminal each round shows a transient bar over its selected clients, and a
one-line summary stays behind when the round ends. When stdout is not a terminal (CI logs, files,
pipes) or ``quiet=True``, only the plain summary lines are printed, without ANSI escapes.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, TypeGuard

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

__all__ = ["RoundProgress", "format_bytes", "render_summary_table"]

# Metrics shown in a round's summary line, in this order, when the round reports them.
_ROUND_LINE_METRICS = (
    "train_loss",
    "loss",
    "accuracy",
    "f1_macro",
    "auc",
    "r2",
    "rmse",
    "mae",
    "epsilon",
    "clip_norm",
)

# Summary keys rendered as run facts below the metrics, with the aliases accepted for each.
_ROUNDS_KEYS = ("rounds", "num_rounds")
_WALL_KEYS = ("wall_seconds", "wall_time_seconds")
_OUT_DIR_KEYS = ("out_dir", "output_dir")
# Summary key holding the final metrics, listed first and without a prefix.
_FINAL_KEY = "final"


def format_bytes(num_bytes: float) -> str:
    """Byte count in decimal units: ``512 B``, ``1.5 kB``, ``12.3 MB``, ``1.1 GB``."""
    value = float(num_bytes)
    if abs(value) < 1000:
        return f"{value:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if abs(value) < 999.95 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


def _format_number(value: float) -> str:
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"


def _is_number(value: Any) -> TypeGuard[float]:
    """A real number, bools excluded."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _format_metric(key: str, value: float) -> str:
    """Format by what the key measures: bytes humanised, seconds with a unit, else a number."""
    if "bytes" in key:
        return format_bytes(value)
    if key.endswith("seconds"):
        return f"{value:.1f} s"
    return _format_number(value)


class RoundProgress:
    """Progress of a federated run, round by round.

    Use as a context manager::

        with RoundProgress(total_rounds) as prog:
            prog.start_round(r, num_clients)
            prog.advance()  # once per finished client
            prog.end_round(r, metrics)

    ``end_round`` prints one line with the round's loss, accuracy, F1 (those present),
    ``bytes_up``/``bytes_down`` humanised and the round's seconds (``metrics["seconds"]`` if given,
    else the time since ``start_round``).
    """

    def __init__(
        self, total_rounds: int, quiet: bool = False, *, console: Console | None = None
    ) -> None:
        self.total_rounds = total_rounds
        self.console = console if console is not None else Console(stderr=False)
        self.quiet = quiet
        self.interactive = not quiet and self.console.is_terminal
        self._progress: Progress | None = None
        self._run_task: TaskID | None = None
        self._round_task: TaskID | None = None
        self._round_started = time.perf_counter()
        if self.interactive:
            self._progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._run_task = self._progress.add_task("rounds", total=total_rounds)

    def __enter__(self) -> RoundProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_round(self, round_num: int, num_clients: int) -> None:
        """Begin round ``round_num`` with ``num_clients`` selected clients."""
        self._round_started = time.perf_counter()
        if self._progress is not None:
            if self._round_task is not None:
                self._progress.remove_task(self._round_task)
            self._round_task = self._progress.add_task(
                f"round {round_num}/{self.total_rounds}", total=num_clients
            )

    def advance(self, num_clients: int = 1) -> None:
        """Mark ``num_clients`` more clients of the current round as finished."""
        if self._progress is not None and self._round_task is not None:
            self._progress.advance(self._round_task, num_clients)

    def end_round(self, round_num: int, metrics: Mapping[str, Any]) -> None:
        """Close the round's bar and print its one-line summary."""
        given = metrics.get("seconds")
        seconds = float(given) if _is_number(given) else time.perf_counter() - self._round_started
        if self._progress is not None:
            if self._round_task is not None:
                self._progress.remove_task(self._round_task)
                self._round_task = None
            if self._run_task is not None:
                self._progress.advance(self._run_task)
        if self.quiet:
            return
        self.console.print(
            self._round_line(round_num, metrics, seconds),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def _round_line(self, round_num: int, metrics: Mapping[str, Any], seconds: float) -> str:
        parts = [f"round {round_num}/{self.total_rounds}"]
        parts += [
            f"{key} {_format_number(metrics[key])}"
            for key in _ROUND_LINE_METRICS
            if _is_number(metrics.get(key))
        ]
        for key, label in (("bytes_up", "up"), ("bytes_down", "down")):
            if _is_number(metrics.get(key)):
                parts.append(f"{label} {format_bytes(metrics[key])}")
        parts.append(f"{seconds:.1f} s")
        return " | ".join(parts)


def _metric_rows(summary: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(name, formatted value)`` for the numeric entries of ``summary["final"]``, then of
    ``summary`` itself; other nested mappings (the config, dataset facts) are not results."""
    final = summary.get(_FINAL_KEY)
    sources = [final] if isinstance(final, Mapping) else []
    skip = {*_ROUNDS_KEYS, *_WALL_KEYS, *_OUT_DIR_KEYS}
    sources.append({k: v for k, v in summary.items() if k not in skip})
    for source in sources:
        for key, value in source.items():
            if _is_number(value):
                yield str(key), _format_metric(str(key), value)


def _first(summary: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((summary[k] for k in keys if summary.get(k) is not None), None)


def render_summary_table(
    summary: Mapping[str, Any],
    *,
    console: Console | None = None,
    title: str = "fedloom run summary",
) -> None:
    """Print the closing table of a run: its scalar metrics, then rounds, wall time and folder.

    Rows are the numeric entries of ``summary["final"]`` (the final metrics), if present, then the
    numeric top-level entries; lists, strings, None and other nested mappings are left out. Keys
    with ``bytes`` in their name are humanised. Run facts are read from ``rounds``,
    ``wall_seconds`` and ``out_dir`` when present.
    """
    console = console if console is not None else Console(stderr=False)
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right", overflow="fold")
    for name, text in _metric_rows(summary):
        table.add_row(name, text)

    facts: list[tuple[str, str]] = []
    rounds = _first(summary, _ROUNDS_KEYS)
    if rounds is not None:
        facts.append(("rounds", str(rounds)))
    wall = _first(summary, _WALL_KEYS)
    if _is_number(wall):
        facts.append(("wall time", f"{wall:.1f} s"))
    out_dir = _first(summary, _OUT_DIR_KEYS)
    if out_dir is not None:
        facts.append(("output folder", str(out_dir)))
    if facts and table.row_count:
        table.add_section()
    for name, text in facts:
        table.add_row(name, text)
    console.print(table)
