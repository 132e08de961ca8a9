"""The live state of a running run, for a dashboard: what ``metrics.jsonl`` cannot say yet.

``metrics.jsonl`` gets a line when a round ends. Between lines a dashboard also wants the run's
status, the round in progress, the clients of that round as their results arrive (simulation:
the selected cohort and each client's train loss), and in a deployment the server's client table
(connected, last seen, rounds joined, failures, rejected updates and why).

``LiveFeed`` is a round listener that keeps that state and writes it to ``live.json`` in the
results folder (atomically, at most every ``min_interval`` seconds, and always when a round starts
or ends and when the status changes), so a dashboard in another process (``fedloom dashboard
RUN_DIR``) reads the same state as one inside the run. A run only has a feed when a dashboard was
asked for; nothing else reads or writes ``live.json``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedloom.core.task import Result
from fedloom.tracking.results import to_json_safe

__all__ = ["LIVE_FILE", "LiveFeed", "read_live"]

LIVE_FILE = "live.json"
ClientTable = Callable[[], list[dict[str, Any]]]


def read_live(out_dir: Path) -> dict[str, Any] | None:
    """The live state a run's feed last wrote in ``out_dir``, or None when it has none."""
    try:
        value = json.loads((Path(out_dir) / LIVE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


class LiveFeed:
    """The live state of one run (see the module docstring).

    ``mode`` is ``simulation`` or ``deployment``; ``clients``, when set, returns the deployment's
    client table (``Hub.client_table``) and is read at every snapshot.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        rounds: int,
        mode: str,
        config: Mapping[str, Any],
        clients: ClientTable | None = None,
        min_interval: float = 0.5,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.rounds = rounds
        self.mode = mode
        self.config = dict(config)
        self.clients = clients
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._status = "starting"
        self._round: int | None = None  # the round in progress
        self._last_round: int | None = None
        self._cohort: list[dict[str, Any]] = []
        self._last_cohort: list[dict[str, Any]] = []
        self._written = 0.0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.write()

    # -- round listener ---------------------------------------------------------------------
    def on_round_start(self, round_num: int, num_clients: int) -> None:
        with self._lock:
            self._status = "running"
            self._round = round_num
            self._cohort = []
        self.write()

    def on_result(self, result: Result) -> None:
        loss = result.metrics.get("train_loss")
        row: dict[str, Any] = {
            "client_id": result.task.client_id,
            "kind": result.task.kind,
            "ok": result.ok,
            "num_examples": result.num_examples,
            "train_loss": float(loss)
            if isinstance(loss, numbers.Real) and math.isfinite(float(loss))
            else None,
            "seconds": result.seconds,
            "error": result.error,
        }
        with self._lock:
            self._cohort.append(row)
        self.write(force=False)

    def on_round_end(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._last_round = int(record["round"])
            self._last_cohort = self._cohort
            self._cohort = []
            self._round = None
        self.write()

    # -- status -----------------------------------------------------------------------------
    def set_status(self, status: str) -> None:
        """``waiting``, ``running``, ``finished``, ``failed`` or ``interrupted``."""
        with self._lock:
            self._status = status
        self.write()

    def snapshot(self) -> dict[str, Any]:
        """The live state as JSON-ready values."""
        clients = self.clients() if self.clients is not None else None
        with self._lock:
            return to_json_safe(  # type: ignore[no-any-return]
                {
                    "status": self._status,
                    "mode": self.mode,
                    "rounds": self.rounds,
                    "round_in_progress": self._round,
                    "last_round": self._last_round,
                    "cohort": list(self._cohort),
                    "last_cohort": list(self._last_cohort),
                    "clients": clients,
                    "config": self.config,
                    "updated": time.time(),
                }
            )

    def write(self, force: bool = True) -> None:
        """Write ``live.json`` (to a temporary file, renamed into place); unless ``force``, only
        when ``min_interval`` seconds have passed since the last write."""
        now = time.monotonic()
        if not force and now - self._written < self.min_interval:
            return
        self._written = now
        path = self.out_dir / LIVE_FILE
        tmp = path.with_name(f"{LIVE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(self.snapshot(), allow_nan=False), encoding="utf-8")
        os.replace(tmp, path)
