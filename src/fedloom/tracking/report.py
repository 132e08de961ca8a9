"""``fedloom report``: several runs side by side, from their results folders.

For each run: its final metrics (the last evaluated round of ``metrics.jsonl``, as ``summary.json``
has them), the bytes it moved and the time it took, in one table; and overlay plots of quality
(accuracy, or R2 for regression) against round and against cumulative bytes up + down. Written as
``report.csv``, ``report.png`` and ``report.html``, a single file with the table and the figure
inlined (a base64 PNG), with no script, stylesheet or image fetched from anywhere.

It reads ``metrics.jsonl`` only (``summary.json`` when present, for the wall time), so it also
reports a run that is still going or that crashed, up to its last finished round.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedloom.errors import FedloomError
from fedloom.tracking.console import format_bytes
from fedloom.tracking.plots import _finite, _quality_key
from fedloom.tracking.results import METRICS_FILE, SUMMARY_FILE, read_metrics
from fedloom.tracking.summary import final_metrics

__all__ = ["RunReport", "load_run", "report_rows", "write_report"]

# Final metrics shown in the table, in this order, when any of the runs has them.
REPORT_METRICS = (
    "accuracy",
    "loss",
    "f1_macro",
    "auc",
    "r2",
    "rmse",
    "mae",
    "fed_accuracy_mean",
    "fed_accuracy_worst10",
    "fed_loss_mean",
    "train_loss",
    "epsilon",
)
_BYTES_PER_MB = 1e6


class ReportError(FedloomError):
    """A folder given to ``fedloom report`` is not a run's results folder."""


@dataclass(frozen=True)
class RunReport:
    """One run's records and the facts the report shows."""

    name: str
    path: Path
    records: list[dict[str, Any]]
    wall_seconds: float

    @property
    def final(self) -> dict[str, Any]:
        return final_metrics(self.records)

    @property
    def bytes_up(self) -> int:
        return sum(int(r.get("bytes_up") or 0) for r in self.records)

    @property
    def bytes_down(self) -> int:
        return sum(int(r.get("bytes_down") or 0) for r in self.records)


def load_run(path: Path, name: str | None = None) -> RunReport:
    """The run in results folder ``path``. The wall time is ``summary.json``'s ``wall_seconds``
    for a finished run, else the sum of its rounds' ``seconds``."""
    path = Path(path)
    if not (path / METRICS_FILE).is_file():
        raise ReportError(f"{path} is not a results folder: it has no {METRICS_FILE}")
    records = read_metrics(path)
    wall = sum(_finite(r.get("seconds")) or 0.0 for r in records)
    summary_path = path / SUMMARY_FILE
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        wall = _finite(summary.get("wall_seconds")) or wall
    return RunReport(name or path.name, path, records, wall)


def _names(paths: Sequence[Path]) -> list[str]:
    """Folder names, or whole paths where two runs share a folder name."""
    names = [Path(p).name for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def report_rows(runs: Sequence[RunReport]) -> tuple[list[str], list[dict[str, Any]]]:
    """The table: its columns, and one row per run (numbers as they are, None where a run has
    no such metric)."""
    metrics = [k for k in REPORT_METRICS if any(_finite(r.final.get(k)) is not None for r in runs)]
    columns = ["run", "rounds", *metrics, "bytes_up", "bytes_down", "bytes_total", "wall_seconds"]
    rows = []
    for run in runs:
        final = run.final
        row: dict[str, Any] = {"run": run.name, "rounds": len(run.records)}
        row.update({k: _finite(final.get(k)) for k in metrics})
        row.update(
            bytes_up=run.bytes_up,
            bytes_down=run.bytes_down,
            bytes_total=run.bytes_up + run.bytes_down,
            wall_seconds=run.wall_seconds,
        )
        rows.append(row)
    return columns, rows


def format_cell(column: str, value: Any) -> str:
    """A table cell as the report shows it: bytes humanised, seconds to 0.1 s, metrics to 4
    decimals, a missing metric as a dash."""
    if value is None:
        return "-"
    if column.startswith("bytes"):
        return format_bytes(value)
    if column == "wall_seconds":
        return f"{value:.1f} s"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _overlay(runs: Sequence[RunReport]) -> Figure:
    records = [rec for run in runs for rec in run.records]
    quality = _quality_key(records)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    by_round, by_bytes = fig.subplots(1, 2)
    for run in runs:
        ordered = sorted(run.records, key=lambda r: _finite(r.get("round")) or 0.0)
        total = 0.0
        rounds, mbs, values = [], [], []
        for rec in ordered:
            total += (_finite(rec.get("bytes_up")) or 0.0) + (_finite(rec.get("bytes_down")) or 0.0)
            value = _finite(rec.get(quality))
            if value is not None:
                rounds.append(_finite(rec.get("round")) or 0.0)
                mbs.append(total / _BYTES_PER_MB)
                values.append(value)
        by_round.plot(rounds, values, marker="o", markersize=3, label=run.name)
        by_bytes.plot(mbs, values, marker="o", markersize=3, label=run.name)
    for ax, xlabel in ((by_round, "round"), (by_bytes, "cumulative MB (up + down)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(quality)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _html(columns: list[str], rows: list[dict[str, Any]], png: bytes, runs: list[RunReport]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(format_cell(c, row[c]))}</td>" for c in columns)
        + "</tr>"
        for row in rows
    )
    folders = "".join(f"<li><code>{html.escape(str(r.path))}</code></li>" for r in runs)
    image = base64.b64encode(png).decode("ascii")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<title>fedloom report</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 8px}"
        "td{text-align:right}td:first-child{text-align:left}th{background:#f2f2f2}"
        "img{max-width:100%}"
        "</style></head><body>\n<h1>fedloom report</h1>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"
        f"<img alt='quality against round and cumulative bytes' src='data:image/png;base64,{image}'>\n"
        f"<h2>Runs</h2><ul>{folders}</ul>\n</body></html>\n"
    )


def write_report(paths: Sequence[Path], out_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Compare the runs in ``paths``: write ``report.csv``, ``report.png`` and ``report.html``
    into ``out_dir``; returns the table (columns, rows)."""
    if not paths:
        raise ReportError("give at least one results folder")
    runs = [load_run(Path(p), n) for p, n in zip(paths, _names(paths), strict=True)]
    columns, rows = report_rows(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "report.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: "" if row[c] is None else row[c] for c in columns} for row in rows)
    buffer = io.BytesIO()
    _overlay(runs).savefig(buffer, format="png", dpi=100)
    png = buffer.getvalue()
    (out_dir / "report.png").write_bytes(png)
    (out_dir / "report.html").write_text(_html(columns, rows, png, runs), encoding="utf-8")
    return columns, rows
