"""Weights & Biases in offline mode (``tracking.wandb``): the run is written to the results folder
(``wandb/offline-run-*``) by W&B's own library and never sent anywhere; ``wandb sync`` uploads it
later, from a machine that may reach the W&B server.

Each round logs, at step ``round``, the same scalars TensorBoard gets (``record_scalars``: every
number of the round's record, ``phase_seconds/<phase>`` for the phases). The run's config is the
W&B config. ``wandb`` is imported only when chosen; system statistics, git and code capture and
console capture are off (a federated run's coordinator should not ship its source or logs).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedloom.core.task import Result
from fedloom.tracking.tensorboard import record_scalars

__all__ = ["WandbTracker"]


class WandbTracker:
    """A round listener writing an offline W&B run into ``out_dir``."""

    def __init__(self, out_dir: Path, *, project: str, config: Mapping[str, Any]) -> None:
        import wandb

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            mode="offline",
            dir=str(self.out_dir),
            project=project,
            name=self.out_dir.resolve().name,
            config=dict(config),
            settings=wandb.Settings(
                silent=True,
                console="off",
                x_disable_stats=True,
                x_disable_machine_info=True,
                disable_git=True,
                disable_code=True,
                save_code=False,
            ),
        )

    def on_round_start(self, round_num: int, num_clients: int) -> None:
        pass

    def on_result(self, result: Result) -> None:
        pass

    def on_round_end(self, record: dict[str, Any]) -> None:
        self.run.log(dict(record_scalars(record)), step=int(record["round"]))

    def close(self, ok: bool = True) -> None:
        self.run.finish(exit_code=0 if ok else 1)
