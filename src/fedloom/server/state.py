"""The coordinator's durable state: SQLite for the run, its rounds, metrics and clients, and
safetensors checkpoints of the global model and the server optimiser.

Layout of ``--state``::

    state.sqlite3                 run, rounds, metrics, clients, attempts (WAL, synchronous=FULL)
    checkpoints/round-0003.safetensors

After each completed round the checkpoint is written to a temporary file, flushed to disk and
renamed into place; only then does one transaction record the round, its metrics and the
checkpoint path. A crash at any point leaves either the previous round or this one as the last
completed round, never a round without its checkpoint. Resuming loads that checkpoint and the
recorded history, and the run continues with the next round.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fedloom.errors import DeploymentError
from fedloom.optim import OptState
from fedloom.tracking.results import to_json_safe

DB_FILE = "state.sqlite3"
CHECKPOINT_DIR = "checkpoints"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    run_id TEXT NOT NULL,
    config_json TEXT NOT NULL,
    identity_json TEXT NOT NULL,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    record_json TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    completed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    round INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (round, name)
);
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY,
    client_id INTEGER NOT NULL UNIQUE,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    num_examples INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS attempts (
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    record_json TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (round, attempt)
);
"""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    last_round: int
    resumed: bool
    status: str


class StateStore:
    """The state folder of one deployment run. Thread-safe: gRPC handlers register clients while
    the coordinator commits rounds."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / CHECKPOINT_DIR).mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.folder / DB_FILE, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def open_run(self, config_json: str, identity: dict[str, Any]) -> RunInfo:
        """Start a run, or resume the one recorded here.

        ``identity`` holds the config sections that define the run (seed, data, model, strategy):
        resuming with a different identity is refused, because the checkpoint would not fit it.
        """
        ident = json.dumps(identity, sort_keys=True)
        with self._lock:
            row = self._db.execute("SELECT run_id, identity_json, status FROM run").fetchone()
            if row is None:
                run_id = uuid.uuid4().hex[:12]
                self._db.execute(
                    "INSERT INTO run VALUES (1, ?, ?, ?, ?, 'running', NULL)",
                    (run_id, config_json, ident, time.time()),
                )
                return RunInfo(run_id, 0, resumed=False, status="running")
            run_id, stored, status = row
            if stored != ident:
                old, new = json.loads(stored), identity
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise DeploymentError(
                    f"--state {str(self.folder)!r} holds run {run_id} with a different config "
                    f"(sections differ: {', '.join(diff)}); use a new --state folder for a new run"
                )
            last = self._db.execute("SELECT COALESCE(MAX(round), 0) FROM rounds").fetchone()[0]
            self._db.execute("UPDATE run SET config_json = ? WHERE id = 1", (config_json,))
            return RunInfo(run_id, int(last), resumed=True, status=str(status))

    def client_id(self, name: str, num_examples: int | None = None) -> int:
        """The stable id of client ``name``, assigned on first sight (0, 1, 2, ...)."""
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT client_id FROM clients WHERE name = ?", (name,)
            ).fetchone()
            if row is not None:
                self._db.execute(
                    "UPDATE clients SET last_seen = ?, num_examples = COALESCE(?, num_examples) "
                    "WHERE name = ?",
                    (now, num_examples, name),
                )
                return int(row[0])
            cid = self._db.execute(
                "SELECT COALESCE(MAX(client_id) + 1, 0) FROM clients"
            ).fetchone()[0]
            self._db.execute(
                "INSERT INTO clients VALUES (?, ?, ?, ?, ?)",
                (name, cid, now, now, num_examples or 0),
            )
            return int(cid)

    def num_clients(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM clients").fetchone()[0])

    def commit_round(
        self,
        record: dict[str, Any],
        params: np.ndarray,
        opt_state: OptState,
        keep: int = 2,
    ) -> Path:
        """Checkpoint and record a completed round, atomically; returns the checkpoint path."""
        r = int(record["round"])
        path = self.folder / CHECKPOINT_DIR / f"round-{r:04d}.safetensors"
        tmp = path.with_suffix(".tmp")
        tensors = {"params": np.ascontiguousarray(params)}
        tensors.update({f"opt.{k}": np.ascontiguousarray(v) for k, v in opt_state.items()})
        save_file(tensors, str(tmp), metadata={"round": str(r)})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        safe = to_json_safe(record)
        metrics = [
            (r, k, float(v))
            for k, v in safe.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and k != "round"
            and math.isfinite(float(v))
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?)",
                    (r, record.get("status", "ok"), json.dumps(safe), str(path), time.time()),
                )
                self._db.execute("DELETE FROM metrics WHERE round = ?", (r,))
                self._db.executemany("INSERT INTO metrics VALUES (?, ?, ?)", metrics)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._prune(r, keep)
        return path

    def record_attempt(self, record: dict[str, Any], attempt: int) -> None:
        """Keep a failed attempt at a round (it is retried) for the record."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?)",
                (int(record["round"]), attempt, json.dumps(to_json_safe(record)), time.time()),
            )

    def _prune(self, latest: int, keep: int) -> None:
        for old in (self.folder / CHECKPOINT_DIR).glob("round-*.safetensors"):
            try:
                r = int(old.stem.split("-")[1])
            except (IndexError, ValueError):
                continue
            if r <= latest - keep:
                old.unlink(missing_ok=True)

    def history(self) -> list[dict[str, Any]]:
        """The records of the completed rounds, in order."""
        with self._lock:
            rows = self._db.execute("SELECT record_json FROM rounds ORDER BY round").fetchall()
        return [json.loads(r[0]) for r in rows]

    def load_checkpoint(self, r: int) -> tuple[np.ndarray, OptState]:
        """The global params and server optimiser state after round ``r``."""
        with self._lock:
            row = self._db.execute("SELECT checkpoint FROM rounds WHERE round = ?", (r,)).fetchone()
        if row is None:
            raise DeploymentError(f"no checkpoint recorded for round {r}")
        path = Path(row[0])
        if not path.is_file():
            raise DeploymentError(f"checkpoint of round {r} is missing: {path}")
        tensors = load_file(str(path))
        params = tensors.pop("params")
        opt = {k.removeprefix("opt."): v for k, v in tensors.items() if k.startswith("opt.")}
        return params, opt

    def mark(self, status: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE run SET status = ?, finished = ? WHERE id = 1",
                (status, time.time() if status != "running" else None),
            )
