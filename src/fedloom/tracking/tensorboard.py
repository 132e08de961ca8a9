"""TensorBoard event files of a run, written by ``torch.utils.tensorboard`` (``tracking.tensorboard``).

Each round adds, at step ``round``:

- a scalar per number in the round's record (``accuracy``, ``loss``, ``bytes_up``, ``seconds``, ...)
  under its own key, and the phases of ``phase_seconds`` as ``phase_seconds/<phase>``; lists (per
  class metrics), strings and booleans are left out;
- a histogram per metric the clients reported with their results (``clients/train_loss``, and
  ``clients/num_examples``), over the clients that returned one in that round: the spread a mean
  hides (fairness, stragglers, a client with broken data).

The events go into the results folder itself, so ``tensorboard --logdir runs`` lists every run by
its folder name. ``torch.utils.tensorboard`` (and with it the ``tensorboard`` package) is imported
only when the tracker is chosen.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.core.task import Result

__all__ = ["TensorBoardTracker", "record_scalars"]


def _number(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def record_scalars(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(tag, value)`` for every finite number in a round record, nested mappings (such as
    ``phase_seconds``) as ``outer/inner``; the ``round`` key is the step, not a scalar."""
    for key, value in record.items():
        if not prefix and key == "round":
            continue
        if isinstance(value, Mapping):
            yield from record_scalars(value, f"{prefix}{key}/")
            continue
        number = _number(value)
        if number is not None:
            yield f"{prefix}{key}", number


class TensorBoardTracker:
    """A round listener writing a run's TensorBoard events into ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self._per_client: dict[str, list[float]] = {}

    def on_round_start(self, round_num: int, num_clients: int) -> None:
        self._per_client = {}  # a deployment may retry a round: only the last attempt counts

    def on_result(self, result: Result) -> None:
        if not result.ok:
            return
        self._per_client.setdefault("num_examples", []).append(float(result.num_examples))
        for key, value in result.metrics.items():
            number = _number(value)
            if number is not None:
                self._per_client.setdefault(key, []).append(number)

    def on_round_end(self, record: dict[str, Any]) -> None:
        step = int(record["round"])
        for tag, value in record_scalars(record):
            self.writer.add_scalar(tag, value, step)
        for key, values in sorted(self._per_client.items()):
            self.writer.add_histogram(f"clients/{key}", np.asarray(values, np.float64), step)
        self._per_client = {}
        self.writer.flush()

    def close(self, ok: bool = True) -> None:
        self.writer.close()
