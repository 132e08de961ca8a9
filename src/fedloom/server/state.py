"""The coordinator's durable state: SQLite for the run, its rounds, metrics and clients, and
safetensors checkpoints of everything the server keeps between rounds.

Layout of ``--state``::

    state.sqlite3                 run, rounds, metrics, clients, attempts (WAL, synchronous=FULL)
    checkpoints/round-0003.safetensors

A checkpoint holds the named arrays of ``Coordinator.checkpoint()``: ``params``, the server
optimiser's ``opt.*`` and the strategy's ``strategy.*`` (SCAFFOLD's control variate, a clipping
bound). Resuming without any of them would quietly change the algorithm (SCAFFOLD would restart
from a zero control variate), so ``load_checkpoint`` refuses a checkpoint that lacks an array the
run needs. Checkpoints of older versions, which hold only ``params`` and ``opt.*``, still load for
strategies that keep no state.

After each completed round the checkpoint is written to a temporary file, flushed to disk and
renamed into place; only then does one transaction record the round, its metrics, the checkpoint's
path (relative to the state folder, so the folder can be moved) and its SHA-256. The WAL is then
checkpointed into ``state.sqlite3``, so the database file alone holds every completed round. A
crash at any point leaves either the previous round or this one as the last completed round, never
a round without its checkpoint.

Resuming (``resume``) takes the newest checkpoint that is intact: present, of the recorded SHA-256
(a truncated file, a damaged header, a flipped bit or a NaN written over it all fail), readable as
safetensors, and with finite params. A damaged newer one is skipped with a warning that says which
round the run resumes after, and the rounds after it are run again. A damaged database is a
``DeploymentError`` naming the file, never a raw ``sqlite3`` traceback, and a folder that holds
checkpoints but records no run (its ``-wal`` file was lost) is not silently started afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from fedloom.errors import DeploymentError
from fedloom.tracking.results import to_json_safe

log = logging.getLogger("fedloom.server")

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
        with self._sqlite():
            self._db = sqlite3.connect(
                self.folder / DB_FILE, isolation_level=None, check_same_thread=False
            )
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(str(p) for p in problems[:3]))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(rounds)")}
            if "sha256" not in columns:  # state folders of older versions
                self._db.execute("ALTER TABLE rounds ADD COLUMN sha256 TEXT")

    @contextlib.contextmanager
    def _sqlite(self) -> Iterator[None]:
        """``sqlite3`` errors as a ``DeploymentError`` that names the file and what to do."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise DeploymentError(
                f"the state database {str(self.folder / DB_FILE)!r} is damaged or not a SQLite "
                f"database ({exc}); restore it (with its -wal file) from a backup, or start a new "
                "run in a new --state folder"
            ) from None

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()

    def has_run(self) -> bool:
        with self._lock, self._sqlite():
            return bool(self._db.execute("SELECT COUNT(*) FROM run").fetchone()[0] > 0)

    def checkpoint_files(self) -> list[Path]:
        return sorted((self.folder / CHECKPOINT_DIR).glob("round-*.safetensors"))

    def open_run(
        self, config_json: str, identity: dict[str, Any], new_run: bool = False
    ) -> RunInfo:
        """Start a run, or resume the one recorded here.

        ``identity`` holds the config sections that define the run (seed, data, model, strategy):
        resuming with a different identity is refused, because the checkpoint would not fit it.
        A folder with checkpoints but no recorded run is refused unless ``new_run``; then its
        checkpoints are moved aside to ``checkpoints/orphaned-<time>/``, not deleted.
        """
        ident = json.dumps(identity, sort_keys=True)
        with self._lock, self._sqlite():
            row = self._db.execute("SELECT run_id, identity_json, status FROM run").fetchone()
            if row is None:
                self._orphans(new_run)
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

    def _orphans(self, new_run: bool) -> None:
        """Refuse (or, with ``new_run``, move aside) checkpoints that no recorded run owns."""
        files = self.checkpoint_files()
        if not files:
            return
        if not new_run:
            raise DeploymentError(
                f"--state {str(self.folder)!r} holds checkpoints ({files[-1].name}, ...) but its "
                f"database records no run: its {DB_FILE}-wal file was probably lost (copy the "
                "folder whole, with the -wal and -shm files, to resume). Pass --new-run to start "
                "a new run here anyway (the old checkpoints are moved aside), or use a new --state"
            )
        aside = self.folder / CHECKPOINT_DIR / f"orphaned-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir()
        for f in files:
            os.replace(f, aside / f.name)
        log.warning("--new-run: moved %d old checkpoints to %s", len(files), aside)

    def client_id(self, name: str, num_examples: int | None = None) -> int:
        """The stable id of client ``name``, assigned on first sight (0, 1, 2, ...)."""
        now = time.time()
        with self._lock, self._sqlite():
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
        with self._lock, self._sqlite():
            return int(self._db.execute("SELECT COUNT(*) FROM clients").fetchone()[0])

    def commit_round(
        self,
        record: dict[str, Any],
        checkpoint: Mapping[str, np.ndarray],
        keep: int = 2,
    ) -> Path:
        """Checkpoint and record a completed round, atomically; returns the checkpoint path.

        ``checkpoint`` is ``Coordinator.checkpoint()``: named arrays, stored as they are.
        """
        r = int(record["round"])
        if "params" not in checkpoint:
            raise ValueError("a checkpoint must hold the model's 'params'")
        relative = f"{CHECKPOINT_DIR}/round-{r:04d}.safetensors"
        path = self.folder / relative
        tmp = path.with_suffix(".tmp")
        # np.require, not ascontiguousarray: a 0-d array (a scalar bound) must come back 0-d.
        tensors = {name: np.require(value, requirements="C") for name, value in checkpoint.items()}
        data = save(tensors, metadata={"round": str(r)})
        digest = hashlib.sha256(data).hexdigest()
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
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
        with self._lock, self._sqlite():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO rounds (round, status, record_json, checkpoint, "
                    "completed, sha256) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        r,
                        record.get("status", "ok"),
                        json.dumps(safe),
                        relative,
                        time.time(),
                        digest,
                    ),
                )
                self._db.execute("DELETE FROM metrics WHERE round = ?", (r,))
                self._db.executemany("INSERT INTO metrics VALUES (?, ?, ?)", metrics)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            # Into state.sqlite3 itself: a copy of that file alone holds every completed round.
            self._db.execute("PRAGMA wal_checkpoint(FULL)")
        self._prune(r, keep)
        return path

    def record_attempt(self, record: dict[str, Any], attempt: int) -> None:
        """Keep a failed attempt at a round (it is retried) for the record."""
        with self._lock, self._sqlite():
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
        with self._lock, self._sqlite():
            rows = self._db.execute("SELECT record_json FROM rounds ORDER BY round").fetchall()
        return [json.loads(r[0]) for r in rows]

    def load_checkpoint(
        self, r: int, needs: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The named arrays checkpointed after round ``r``; ``DeploymentError`` if it is missing
        or damaged (see ``resume``).

        ``needs``: the arrays the resuming run keeps (a fresh ``Coordinator.checkpoint()``); each
        must be in the checkpoint with the same shape, or ``DeploymentError`` says which are
        missing. Arrays the checkpoint holds beyond ``needs`` are returned too: strategy state a
        strategy creates during a round (not at the start) must survive a restart as well.
        """
        with self._lock, self._sqlite():
            row = self._db.execute(
                "SELECT checkpoint, sha256 FROM rounds WHERE round = ?", (r,)
            ).fetchone()
        if row is None:
            raise DeploymentError(f"no checkpoint recorded for round {r}")
        path = self._resolve(row[0])
        arrays = self._read(path, row[1], r)
        if needs is not None:
            check_checkpoint(arrays, needs, f"the checkpoint of round {r} ({path})")
        return arrays

    def resume(self, needs: Mapping[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
        """The last round with an intact checkpoint, and its arrays (see ``load_checkpoint``).

        Damaged newer checkpoints are skipped with a warning, and their rounds are forgotten (they
        run again); ``DeploymentError`` when no recorded round has an intact checkpoint.
        """
        with self._lock, self._sqlite():
            rounds = [
                r for (r,) in self._db.execute("SELECT round FROM rounds ORDER BY round DESC")
            ]
        damaged: list[str] = []
        for r in rounds:
            try:
                arrays = self.load_checkpoint(r, needs)
            except CheckpointDamaged as exc:
                damaged.append(str(exc))
                log.warning("%s; trying the round before", exc)
                continue
            if damaged:
                log.warning(
                    "resuming after round %d, the newest intact checkpoint; rounds %d..%d run again",
                    r,
                    r + 1,
                    rounds[0],
                )
                self._forget_after(r)
            return r, arrays
        raise DeploymentError(
            f"cannot resume: no intact checkpoint in {str(self.folder / CHECKPOINT_DIR)!r} "
            f"({'; '.join(damaged) or 'none recorded'}). Restore the folder from a backup, or "
            "start a new run in a new --state folder"
        )

    def _forget_after(self, r: int) -> None:
        with self._lock, self._sqlite():
            self._db.execute("DELETE FROM rounds WHERE round > ?", (r,))
            self._db.execute("DELETE FROM metrics WHERE round > ?", (r,))

    def _resolve(self, stored: str) -> Path:
        """A recorded checkpoint path: relative to the state folder; an absolute one (written
        before paths were relative) is looked up in this folder by name if it is not there."""
        path = Path(stored)
        if not path.is_absolute():
            return self.folder / path
        if path.is_file():
            return path
        return self.folder / CHECKPOINT_DIR / path.name

    @staticmethod
    def _read(path: Path, sha256: str | None, r: int) -> dict[str, np.ndarray]:
        if not path.is_file():
            raise CheckpointDamaged(f"the checkpoint of round {r} is missing: {path}")
        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise CheckpointDamaged(
                f"the checkpoint of round {r} ({path}) does not match its recorded SHA-256 "
                "(damaged on disk)"
            )
        try:
            arrays: dict[str, np.ndarray] = load(data)
        except (SafetensorError, ValueError) as exc:
            raise CheckpointDamaged(
                f"the checkpoint of round {r} ({path}) is not readable safetensors ({exc})"
            ) from None
        params = arrays.get("params")
        if params is not None and not np.isfinite(params).all():
            raise CheckpointDamaged(f"the checkpoint of round {r} ({path}) holds non-finite params")
        return arrays

    def mark(self, status: str) -> None:
        with self._lock, self._sqlite():
            self._db.execute(
                "UPDATE run SET status = ?, finished = ? WHERE id = 1",
                (status, time.time() if status != "running" else None),
            )


class CheckpointDamaged(DeploymentError):
    """A checkpoint file is missing, truncated, altered or unreadable."""


def check_checkpoint(
    arrays: Mapping[str, np.ndarray], needs: Mapping[str, np.ndarray], where: str
) -> None:
    """``DeploymentError`` unless ``arrays`` holds every array of ``needs`` with its shape.

    A missing strategy array means the checkpoint was written by a version of fedloom that did not
    checkpoint strategy state, or by a run of another strategy: resuming from it would silently
    reset that state (SCAFFOLD's control variate to zero), so it is refused with what to do.
    """
    missing = sorted(name for name in needs if name not in arrays)
    if missing:
        strategy = [n for n in missing if n.startswith("strategy.")]
        why = (
            "it was written before fedloom checkpointed strategy state, or by a run of another "
            "strategy; resuming would reset that state and change the algorithm"
            if strategy
            else "it was written by a run with another model or server optimiser"
        )
        raise DeploymentError(
            f"cannot resume: {where} lacks {', '.join(missing)}, which this run needs ({why}). "
            "Finish the run with the fedloom version and strategy that started it, or start a "
            "new run with a new --state folder"
        )
    wrong = [
        f"{name} has shape {tuple(arrays[name].shape)}, the run expects {tuple(value.shape)}"
        for name, value in sorted(needs.items())
        if tuple(arrays[name].shape) != tuple(value.shape)
    ]
    if wrong:
        raise DeploymentError(
            f"cannot resume: {where} does not fit this run ({'; '.join(wrong)}); start a new "
            "run with a new --state folder"
        )
