"""MLflow with a local file store (``tracking.mlflow``): an experiment ``tracking.project`` in
``<results folder>/mlruns``, or in the store ``tracking.mlflow_uri`` names. Written through MLflow's
own ``MlflowClient``; ``mlflow ui --backend-store-uri <results folder>/mlruns`` shows it.

Each round logs, at step ``round``, the same scalars TensorBoard gets (``record_scalars``); the run's
config is logged as parameters (nested keys joined with dots). MLflow 3 keeps its file store in
maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; choosing the default local store sets it (when
unset) for this process. ``mlflow`` is imported only when chosen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedloom.core.task import Result
from fedloom.tracking.tensorboard import record_scalars

__all__ = ["MlflowTracker", "flat_params"]

_MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


def flat_params(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted.key, value as text)`` for every leaf of a nested config."""
    for key, value in config.items():
        if isinstance(value, Mapping):
            yield from flat_params(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", str(value)[:_MAX_PARAM_CHARS]


class MlflowTracker:
    """A round listener logging one MLflow run."""

    def __init__(
        self,
        out_dir: Path,
        *,
        project: str,
        config: Mapping[str, Any],
        uri: str | None = None,
    ) -> None:
        if uri is None:
            uri = (Path(out_dir).resolve() / "mlruns").as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(project)
        )
        run = self.client.create_run(experiment_id, run_name=Path(out_dir).resolve().name)
        self.run_id: str = run.info.run_id
        params = [Param(k, v) for k, v in flat_params(config)]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def on_round_start(self, round_num: int, num_clients: int) -> None:
        pass

    def on_result(self, result: Result) -> None:
        pass

    def on_round_end(self, record: dict[str, Any]) -> None:
        step, now = int(record["round"]), int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in record_scalars(record)]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def close(self, ok: bool = True) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")
