"""A run's results folder: per-round metrics (JSONL), final model, summary and curves.

Layout of ``out_dir``::

    metrics.jsonl      one JSON object per round, appended and flushed as the run goes
    model.safetensors  final global parameters
    summary.json       final metrics and run facts
    curves.png         plots of metrics.jsonl (see ``plot_curves``)

Every file is strict JSON: NaN and infinities, which ``json`` would write as the invalid tokens
``NaN``/``Infinity``, are written as ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file

from fedloom import __version__
from fedloom.tracking.plots import plot_curves

__all__ = ["RunRecorder", "read_metrics", "to_json_safe"]

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"


def to_json_safe(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Non-finite floats become None, numpy scalars and arrays become Python numbers and lists,
    tuples become lists, paths become strings and mapping keys become strings.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return to_json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(to_json_safe(value), allow_nan=False, **kwargs)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read the per-round records of a run, given its ``metrics.jsonl`` or its results folder."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no} is not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no} must be a JSON object, got {line.strip()!r}")
            records.append(record)
    return records


class RunRecorder:
    """Writes the results folder of one run.

    Metrics are appended, never truncated, so a resumed run continues the same ``metrics.jsonl``.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / METRICS_FILE

    def start_new_run(self) -> Path | None:
        """Begin a run from round 1 in this folder: an earlier run's ``metrics.jsonl`` is kept as
        ``metrics.jsonl.1`` (or the next free number) instead of being appended to. Returns where
        it went, or None when there was none."""
        if not self.metrics_path.is_file() or self.metrics_path.stat().st_size == 0:
            return None
        n = 1
        while (kept := self.out_dir / f"{METRICS_FILE}.{n}").exists():
            n += 1
        self.metrics_path.rename(kept)
        return kept

    def log_round(self, record: dict[str, Any]) -> None:
        """Append one round's record (``round`` plus metrics at top level) as a JSON line.

        The file is opened, written and closed per call, so each line is on disk when the call
        returns and a crashed run keeps every finished round.
        """
        if "round" not in record:
            raise ValueError(f"a round record needs a 'round' key, got keys {sorted(record)}")
        line = _dumps(record)
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()

    def save_model(
        self,
        params: dict[str, npt.NDArray[Any]],
        path_name: str = "model.safetensors",
        metadata: dict[str, str] | None = None,
    ) -> Path:
        """Save named parameter arrays as safetensors in the results folder; returns the path."""
        path = self.out_dir / path_name
        tensors = {name: np.ascontiguousarray(array) for name, array in params.items()}
        save_file(tensors, str(path), metadata=metadata)
        return path

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write ``summary.json`` (indented, keys sorted); returns the path."""
        path = self.out_dir / SUMMARY_FILE
        path.write_text(_dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    def write_results(
        self, params: dict[str, npt.NDArray[Any]], summary: dict[str, Any], rounds: int
    ) -> None:
        """The end of a run, simulated or deployed: the final model (``model.safetensors``, with
        the fedloom version and the configured rounds as metadata), ``curves.png`` from
        ``metrics.jsonl``, and ``summary.json``."""
        self.save_model(params, metadata={"fedloom_version": __version__, "rounds": str(rounds)})
        self.write_curves()
        self.write_summary(summary)

    def write_curves(self) -> Path:
        """Plot every record in ``metrics.jsonl`` to ``curves.png``; returns the path."""
        records = read_metrics(self.metrics_path) if self.metrics_path.exists() else []
        path = self.out_dir / CURVES_FILE
        plot_curves(records, path)
        return path
