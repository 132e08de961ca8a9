"""What a run reports: round listeners that feed the terminal progress and the results folder,
and the ``summary.json`` built from the run's history.

Shared by ``fedloom run``, ``fedloom server`` and ``fedloom.simulate``, so every front end writes the
same files with the same keys. Nothing here knows how the run was wired: the listeners follow the
coordinator's ``RoundListener`` protocol and the summary takes plain facts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedloom import __version__
from fedloom.core.task import Result
from fedloom.tracking.console import RoundProgress
from fedloom.tracking.results import RunRecorder

__all__ = ["ProgressListener", "RecorderListener", "final_metrics", "summarize"]

# Round-record keys that describe the round itself rather than the model's quality.
_BOOKKEEPING = frozenset(
    {
        "round",
        "selected",
        "returned",
        "rejected",
        "failed",
        "bytes_up",
        "bytes_down",
        "compression_ratio_up",
        "seconds",
        "phase_seconds",
        "status",
        # deployment bookkeeping (fedloom server)
        "dropped",
        "over_selected",
        "connected",
    }
)


class ProgressListener:
    """Drives a ``RoundProgress``: a bar per round over its clients, a line when it ends."""

    def __init__(self, progress: RoundProgress) -> None:
        self.progress = progress

    def on_round_start(self, round_num: int, num_clients: int) -> None:
        self.progress.start_round(round_num, num_clients)

    def on_result(self, result: Result) -> None:
        self.progress.advance()

    def on_round_end(self, record: dict[str, Any]) -> None:
        self.progress.end_round(record["round"], record)


class RecorderListener:
    """Appends each finished round's record to the results folder's ``metrics.jsonl``, so a run
    that crashes keeps every round it finished."""

    def __init__(self, recorder: RunRecorder) -> None:
        self.recorder = recorder

    def on_round_start(self, round_num: int, num_clients: int) -> None:
        pass

    def on_result(self, result: Result) -> None:
        pass

    def on_round_end(self, record: dict[str, Any]) -> None:
        self.recorder.log_round(record)


def final_metrics(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Metrics of the last evaluated round (per-class lists included); {} when no round was
    evaluated. The last round need not be evaluated (``eval.every``), hence the search back."""
    for record in reversed(history):
        if "loss" in record or any(k.startswith("fed_") for k in record):
            return {k: v for k, v in record.items() if k not in _BOOKKEEPING}
    return {}


def summarize(
    *,
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    wall_seconds: float,
    out_dir: Path,
    num_clients: int,
    skipped_clients: Sequence[int],
    num_parameters: int,
    data: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``summary.json`` of a run: final metrics and run facts.

    ``config`` is the run's configuration as JSON-ready values; ``data`` describes the training
    data (``name``, ``task``, ``train_examples``, ``test_examples``). Key order is the order of the
    closing table that ``render_summary_table`` prints.
    """
    return {
        "fedloom_version": __version__,
        "config": dict(config),
        "final": final_metrics(history),
        "rounds": len(history),
        "failed_rounds": sum(1 for r in history if r["status"] != "ok"),
        "wall_seconds": wall_seconds,
        "bytes_up": sum(r["bytes_up"] for r in history),
        "bytes_down": sum(r["bytes_down"] for r in history),
        "num_clients": num_clients,
        "skipped_clients": list(skipped_clients),
        "num_parameters": num_parameters,
        "dataset": dict(data),
        "out_dir": str(out_dir),
    }
