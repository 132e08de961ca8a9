"""The trackers a config's ``tracking:`` section chooses, opened for one run's results folder.

A tracker is a round listener (``on_round_start``, ``on_result``, ``on_round_end``, as the
coordinator's ``RoundListener``) with a ``close``. Each one is imported only when chosen, so a run
without trackers never loads their packages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from fedloom.config import TrackingConfig
from fedloom.core.task import Result

__all__ = ["Tracker", "open_trackers"]


class Tracker(Protocol):
    def on_round_start(self, round_num: int, num_clients: int) -> None: ...

    def on_result(self, result: Result) -> None: ...

    def on_round_end(self, record: dict[str, Any]) -> None: ...

    def close(self, ok: bool = True) -> None:
        """Flush and finish; ``ok`` is False when the run failed or was interrupted."""
        ...


@contextlib.contextmanager
def open_trackers(
    tracking: TrackingConfig, out_dir: Path, config: Mapping[str, Any] | None = None
) -> Iterator[list[Tracker]]:
    """The trackers ``tracking`` turns on, writing into ``out_dir``; each is closed (its files
    flushed, a failed run marked as failed) when the block ends, however it ends. ``config`` is the run's config as JSON-ready
    values, for the trackers that record it (W&B config, MLflow params)."""
    config = config or {}
    with contextlib.ExitStack() as stack:
        trackers: list[Tracker] = []

        def opened(tracker: Tracker) -> None:
            def close(exc_type: type[BaseException] | None, *exc: object) -> bool:
                tracker.close(ok=exc_type is None)
                return False

            stack.push(close)
            trackers.append(tracker)

        if tracking.tensorboard:
            from fedloom.tracking.tensorboard import TensorBoardTracker

            opened(TensorBoardTracker(out_dir))
        if tracking.wandb:
            from fedloom.tracking.wandb_tracker import WandbTracker

            opened(WandbTracker(out_dir, project=tracking.project, config=config))
        if tracking.mlflow:
            from fedloom.tracking.mlflow_tracker import MlflowTracker

            opened(
                MlflowTracker(
                    out_dir, project=tracking.project, config=config, uri=tracking.mlflow_uri
                )
            )
        yield trackers
