"""Realistic client behaviour in simulation, on a virtual clock (the ``clients`` config section).

Every client has a training speed (examples per second) and a network bandwidth (bytes per
second, each direction), drawn from a seeded lognormal around the configured medians or read
from a trace file, and may come and go over time (alternating online and offline periods of
exponential length, seeded per client, or the intervals a JSON trace lists). A task then takes

    seconds = bytes down / bandwidth + epochs * examples / speed + bytes up / bandwidth

of simulated time, where the bytes are those of the blobs the task names and the upload size its
codec declares (exact for fixed-size codecs, a bound for lossless compression). A client that
goes offline before it is done drops out at that moment.

Synchronous strategies run through ``ClockedEngine``: a stage starts when the previous one ended
and ends when its last kept client is done; with ``deadline_s`` a client that would finish later
is a straggler, left out of the round, and the server waits until the deadline. Only online
clients are selected (``ClockedPopulation``). A strategy without a round barrier (FedBuff) runs
through ``fedloom.engines.virtual_time.VirtualTimeEngine`` on the same clock, selecting among the
same online clients, so both are measured on one model of time. Evaluation takes no simulated
time, nor does the server's own work.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.config import ClientsConfig
from fedloom.core.task import EVALUATE, Blobs, Result, Task
from fedloom.engines.base import Engine
from fedloom.engines.virtual_time import bytes_down, task_passes, with_local_epochs
from fedloom.errors import ConfigError
from fedloom.server.coordinator import Population

__all__ = [
    "Availability",
    "ClientClock",
    "ClientProfile",
    "ClockedEngine",
    "ClockedPopulation",
    "read_trace",
]

_SPEED_STREAM = 0x7370656564  # "speed": the draws of speeds and bandwidths, apart from the rest
_AVAILABILITY_STREAM = 0x617661696C  # "avail"


@dataclass(frozen=True)
class ClientProfile:
    """How fast one client is: ``speed`` in examples per second, ``bandwidth`` in bytes per
    second (each direction)."""

    speed: float
    bandwidth: float


@dataclass(frozen=True)
class TraceEntry:
    """One client's row of a trace file; what it leaves out is drawn."""

    speed: float | None = None
    bandwidth_mbps: float | None = None
    online: tuple[tuple[float, float], ...] | None = None


class Availability:
    """When each client is online: explicit intervals, or an alternating renewal process (online
    for Exp(mean_online) seconds, then offline for Exp(mean_offline)), generated lazily from a
    stream seeded by (seed, client), so the answers never depend on the order of the questions.
    A client starts online with the stationary probability mean_online / (mean_online +
    mean_offline)."""

    def __init__(
        self,
        seed: int,
        mean_online: float | None,
        mean_offline: float,
        intervals: Mapping[int, Sequence[tuple[float, float]]] | None = None,
    ) -> None:
        self.seed = seed
        self.mean_online = mean_online
        self.mean_offline = mean_offline
        self.fixed = {c: list(v) for c, v in (intervals or {}).items()}
        self._drawn: dict[int, list[tuple[float, float]]] = {}
        self._horizon: dict[int, float] = {}  # generated up to here (the end of an offline spell)
        self._rngs: dict[int, np.random.Generator] = {}

    def _intervals(self, client: int, until: float) -> list[tuple[float, float]]:
        if client in self.fixed:
            return self.fixed[client]
        if self.mean_online is None:
            return [(0.0, math.inf)]
        spans = self._drawn.setdefault(client, [])
        if client not in self._rngs:
            rng = np.random.default_rng([self.seed, client, _AVAILABILITY_STREAM])
            self._rngs[client] = rng
            p_online = self.mean_online / (self.mean_online + self.mean_offline)
            start = 0.0 if rng.random() < p_online else rng.exponential(self.mean_offline)
            self._horizon[client] = start
        rng = self._rngs[client]
        while self._horizon[client] <= until:
            start = self._horizon[client]
            end = start + rng.exponential(self.mean_online)
            spans.append((start, end))
            self._horizon[client] = end + rng.exponential(self.mean_offline)
        return spans

    def online_until(self, client: int, at: float) -> float | None:
        """When ``client``, online at time ``at``, goes offline (inf: never); None if it is
        offline at ``at``."""
        for start, end in self._intervals(client, at):
            if start <= at < end:
                return end
        return None

    def next_online(self, client: int, at: float) -> float:
        """The first time >= ``at`` at which ``client`` is online (inf: never again)."""
        for start, end in self._intervals(client, at):
            if at < end:
                return max(start, at)
        return math.inf


@dataclass
class ClientClock:
    """The virtual clock and the clients' behaviour: profiles, availability, local work.

    ``now`` is the simulated time in seconds that a synchronous run has reached.
    """

    profiles: dict[int, ClientProfile]
    num_examples: dict[int, int]
    availability: Availability
    epochs: int = 1
    """Local epochs when a task's config names none."""
    local_seconds: float | None = None
    deadline: float | None = None
    now: float = 0.0

    @property
    def varies(self) -> bool:
        """Whether clients come and go (availability drawn or traced)."""
        a = self.availability
        return a.mean_online is not None or bool(a.fixed)

    @classmethod
    def from_config(
        cls,
        cfg: ClientsConfig,
        *,
        seed: int,
        num_examples: Mapping[int, int],
        epochs: int,
    ) -> ClientClock:
        """The clock of the ``clients`` section over a population with these training-set sizes.
        ``ConfigError`` for a trace file that is missing, malformed or names unknown clients."""
        ids = sorted(num_examples)
        trace: dict[int, TraceEntry] = {}
        if cfg.trace is not None:
            path = Path(cfg.trace)
            trace = read_trace(path)
            unknown = sorted(set(trace) - set(ids))
            if unknown:
                raise ConfigError(
                    f"clients.trace {str(path)!r} names client ids this run does not have: "
                    f"{_preview(unknown)} (the clients are 0 to {len(ids) - 1})"
                )
        rng = np.random.default_rng([seed, _SPEED_STREAM])
        speed_z = rng.standard_normal(len(ids))
        bandwidth_z = rng.standard_normal(len(ids))
        profiles = {}
        for i, cid in enumerate(ids):
            entry = trace.get(cid, TraceEntry())
            speed = entry.speed or cfg.speed * math.exp(cfg.speed_sigma * speed_z[i])
            mbps = entry.bandwidth_mbps or cfg.bandwidth_mbps * math.exp(
                cfg.bandwidth_sigma * bandwidth_z[i]
            )
            profiles[cid] = ClientProfile(speed=speed, bandwidth=mbps * 1e6 / 8)
        intervals = {c: e.online for c, e in trace.items() if e.online is not None}
        return cls(
            profiles=profiles,
            num_examples=dict(num_examples),
            availability=Availability(seed, cfg.mean_online_s, cfg.mean_offline_s, intervals),
            epochs=epochs,
            local_seconds=cfg.local_seconds,
            deadline=cfg.deadline_s,
        )

    def local_epochs(self, client: int, epochs: int) -> int:
        """The epochs ``client`` trains: ``epochs``, or with ``local_seconds`` the whole epochs
        that fit in it at the client's speed (at least 1, at most ``epochs``)."""
        if self.local_seconds is None:
            return epochs
        per_epoch = max(1, self.num_examples.get(client, 0)) / self.profiles[client].speed
        return max(1, min(epochs, int(self.local_seconds / per_epoch + 1e-9)))

    def task_seconds(self, client: int, bytes_down: int, bytes_up: int, epochs: int) -> float:
        """Simulated seconds of one task: download, ``epochs`` passes over the client's
        examples, upload."""
        profile = self.profiles[client]
        work = epochs * self.num_examples.get(client, 0) / profile.speed
        return (bytes_down + bytes_up) / profile.bandwidth + work

    def online_until(self, client: int, at: float) -> float | None:
        """When ``client``, online at ``at``, leaves (inf: never); None if offline at ``at``."""
        return self.availability.online_until(client, at)

    def available(self, clients: Sequence[int], at: float) -> list[int]:
        """Those of ``clients`` online at time ``at``, in ascending order."""
        return sorted(c for c in clients if self.online_until(c, at) is not None)

    def next_online(self, clients: Sequence[int], at: float) -> float:
        """The first time >= ``at`` at which one of ``clients`` is online (inf: never)."""
        return min((self.availability.next_online(c, at) for c in clients), default=math.inf)

    def wait_for(self, clients: Sequence[int], count: int, at: float) -> float:
        """The first time >= ``at`` with at least ``count`` of ``clients`` online at once (inf:
        never). The count grows only when a client comes online, so those are the times tried."""
        t = at
        while math.isfinite(t):
            online = set(self.available(clients, t))
            if len(online) >= min(count, len(clients)):
                return t
            t = self.next_online([c for c in clients if c not in online], t)
        return math.inf

    def wait_for_online(self, count: int) -> None:
        """Move ``now`` on to the first time at which ``count`` clients with data are online
        (a synchronous round needs ``min_fit_clients``); ``ConfigError`` if that never comes."""
        with_data = [c for c, n in self.num_examples.items() if n > 0]
        t = self.wait_for(with_data, count, self.now)
        if not math.isfinite(t):
            raise ConfigError(
                f"clients: fewer than {count} clients are ever online again after "
                f"{self.now:.0f} simulated seconds (the availability trace ends there); "
                "lengthen clients.trace's online intervals or lower strategy.min_fit_clients"
            )
        self.now = t


def read_trace(path: Path) -> dict[int, TraceEntry]:
    """A trace file by client id: CSV with a ``client_id`` column and ``speed`` and/or
    ``bandwidth_mbps``, or JSON, a list of such objects that may add ``online``, a list of
    ``[start, end]`` seconds."""
    if not path.is_file():
        raise ConfigError(f"clients.trace {str(path)!r} does not exist")
    rows: list[Mapping[str, Any]]
    try:
        if path.suffix.lower() == ".json":
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, list) or not all(isinstance(r, dict) for r in loaded):
                raise ValueError("the file must hold a list of objects, one per client")
            rows = loaded
        elif path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            raise ValueError("the file must end in .csv or .json")
        return _entries(rows)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"clients.trace {str(path)!r}: {exc}") from None


def _entries(rows: Sequence[Mapping[str, Any]]) -> dict[int, TraceEntry]:
    out: dict[int, TraceEntry] = {}
    allowed = {"client_id", "speed", "bandwidth_mbps", "online"}
    for n, row in enumerate(rows, start=1):
        extra = set(row) - allowed
        if extra:
            raise ValueError(f"entry {n}: unknown keys {sorted(extra)}; allowed {sorted(allowed)}")
        if row.get("client_id") in (None, ""):
            raise ValueError(f"entry {n} has no client_id")
        cid = int(row["client_id"])
        if cid in out:
            raise ValueError(f"client_id {cid} appears twice")
        online = row.get("online")
        out[cid] = TraceEntry(
            speed=_positive(row.get("speed"), "speed", cid),
            bandwidth_mbps=_positive(row.get("bandwidth_mbps"), "bandwidth_mbps", cid),
            online=None if online is None else _intervals(online, cid),
        )
    return out


def _positive(value: Any, key: str, cid: int) -> float | None:
    if value is None or value == "":
        return None
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"client {cid}: {key} must be a positive number, got {value!r}")
    return v


def _intervals(value: Any, cid: int) -> tuple[tuple[float, float], ...]:
    spans = tuple((float(s), float(e)) for s, e in value)
    last = -math.inf
    for start, end in spans:
        if not (last <= start < end):
            raise ValueError(
                f"client {cid}: online intervals must be [start, end] with start < end, "
                f"sorted and apart, got {value!r}"
            )
        last = end
    return spans


@dataclass
class ClockedPopulation(Population):
    """A population whose eligible clients are those with data that are online now."""

    clock: ClientClock | None = None

    @property
    def eligible(self) -> list[int]:
        with_data = super().eligible
        return with_data if self.clock is None else self.clock.available(with_data, self.clock.now)


@dataclass
class _Planned:
    task: Task
    finish: float
    position: int


@dataclass
class ClockedEngine:
    """An engine whose tasks take simulated time: a synchronous round on the virtual clock.

    Each stage's tasks start at ``clock.now``. A client that leaves before it is done, or (with a
    deadline) that would finish after it, is not run and sends nothing; the others run on the
    wrapped engine in one batch and their results arrive in the order they finish. The stage
    ends when its last client is done, or at the deadline when a straggler was left out, and the
    clock then waits until ``min_clients`` clients are online. Evaluation tasks pass through and
    take no time. ``round_metrics`` reports each round's simulated time for its record.
    """

    engine: Engine
    clock: ClientClock
    min_clients: int = 1
    name: str = field(init=False)
    _reported: float = field(default=0.0, init=False)
    _stragglers: int = field(default=0, init=False)
    _dropouts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.name = self.engine.name

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        timed = [t for t in tasks if t.kind != EVALUATE]
        if not timed:
            yield from self.engine.run(tasks, blobs)
            return
        clock, start = self.clock, self.clock.now
        deadline = math.inf if clock.deadline is None else start + clock.deadline
        kept: list[_Planned] = []
        ends = [start]
        for position, task in enumerate(timed):
            task = with_local_epochs(task, clock)
            epochs = task_passes(task, clock.epochs)
            up = 0 if task.upload is None else task.upload.max_bytes()
            seconds = clock.task_seconds(task.client_id, bytes_down(task, blobs), up, epochs)
            finish = start + seconds
            leaves = clock.online_until(task.client_id, start)
            if leaves is None or leaves < min(finish, deadline):
                self._dropouts += 1  # gone before it was done, or before the deadline cut it
                ends.append(start if leaves is None else leaves)
            elif finish > deadline:
                self._stragglers += 1
                ends.append(deadline)
            else:
                kept.append(_Planned(task, finish, position))
                ends.append(finish)
        by_id = {p.task.client_id: p for p in kept}
        others = [t for t in tasks if t.kind == EVALUATE]
        results = list(self.engine.run([p.task for p in kept] + others, blobs))
        clock.now = max(ends)
        clock.wait_for_online(self.min_clients)

        def arrival(result: Result) -> tuple[float, int]:
            planned = by_id.get(result.task.client_id) if result.task.kind != EVALUATE else None
            return (-math.inf, 0) if planned is None else (planned.finish, planned.position)

        yield from sorted(results, key=arrival)

    def round_metrics(self) -> dict[str, float]:
        """The round's simulated seconds, the simulated time reached, and the clients left out
        (``stragglers`` past the deadline, ``dropouts`` gone offline); counted from the last
        call."""
        out = {
            "sim_seconds": self.clock.now - self._reported,
            "sim_time": self.clock.now,
            "stragglers": float(self._stragglers),
            "dropouts": float(self._dropouts),
        }
        self._reported, self._stragglers, self._dropouts = self.clock.now, 0, 0
        return out

    def close(self) -> None:
        self.engine.close()


def _preview(ids: Sequence[int], n: int = 10) -> str:
    head = ", ".join(str(i) for i in ids[:n])
    return head + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")
