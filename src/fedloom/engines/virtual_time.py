"""Tasks that take simulated time: what one task costs on the virtual clock, and an
``Asynchronous`` engine on that clock (``VirtualTimeEngine``).

A strategy without a round barrier (FedBuff, ``Exchange.until``) needs an ``Asynchronous`` engine:
its tasks outlive the exchange that started them. In a deployment that is the remote engine, on
real time. In simulation it is ``VirtualTimeEngine``, a wrapper around any simulation engine
(sequential, vectorized, ray) and the virtual clock of simulated clients
(``fedloom.server.clock.ClientClock``): the clock says when each started task ends, the wrapped
engine computes what it brings. So the strategy runs one implementation in both places.

- ``start`` starts each task at the clock's ``now``. It ends ``task_seconds`` later (its bytes over
  its client's bandwidth, its passes over its examples at its client's speed), or, if its client
  goes offline before then, at that moment, as dropped: an error ``Result``, never trained.
- ``arrivals`` moves the clock to the next end and yields that one task. Ties go to the task of the
  earlier round, then to the lower client id; one task per call, so the strategy acts on each
  arrival before the next, as it would on real time. The schedule thus depends on the clock and
  on the strategy's seeded choices only, never on the engine that trains.
- Training waits until a result is needed: then every started task not yet trained runs in one
  batch of the wrapped engine (the vectorized engine stacks those that start from the same
  model). A client's result depends on its task only, not on when or beside whom it trains.
- With nothing in flight, ``arrivals`` moves the clock on to the next time a client with data that
  is offline comes online and yields nothing: the strategy then selects among the clients online
  (``ClockedPopulation``), as after any exchange.
- ``run`` (federated evaluation) passes through and takes no simulated time.

Each round's record gets ``sim_seconds``, ``sim_time`` and ``dropouts`` (``round_metrics``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from fedloom.core.task import BASE, FIT, Blob, Blobs, Result, Task
from fedloom.engines.base import Engine

__all__ = ["VirtualClock", "VirtualTimeEngine", "bytes_down", "task_passes", "with_local_epochs"]


class VirtualClock(Protocol):
    """What the engine asks of simulated clients (``fedloom.server.clock.ClientClock``)."""

    now: float
    """The simulated time reached, in seconds."""
    epochs: int
    """Local epochs when a task's config names none."""

    @property
    def num_examples(self) -> Mapping[int, int]:
        """Each client's training examples."""
        ...

    def next_online(self, clients: Sequence[int], at: float) -> float: ...

    def online_until(self, client: int, at: float) -> float | None: ...

    def local_epochs(self, client: int, epochs: int) -> int: ...

    def task_seconds(self, client: int, bytes_down: int, bytes_up: int, epochs: int) -> float: ...


def task_passes(task: Task, epochs: int) -> int:
    """The passes over its examples a task asks of a client: its epochs for training (``epochs``
    when its config names none), one for a full gradient (FedSGD), none for a stage that only
    exchanges values."""
    if task.kind != FIT:
        return 0
    if task.config.get("mode") == "gradient":
        return 1
    return int(task.config.get("epochs", epochs))


def bytes_down(task: Task, blobs: Blobs) -> int:
    """The payload bytes of the blobs a task names (not the model a delta is taken against,
    which the client holds)."""
    return sum(
        len(blobs[d].payload) for role, d in task.blobs.items() if role != BASE and d in blobs
    )


def with_local_epochs(task: Task, clock: VirtualClock) -> Task:
    """``task`` with the epochs its client trains on the clock (``ClientClock.local_epochs``:
    fewer for a slow client under ``clients.local_seconds``)."""
    if task.kind != FIT:
        return task
    asked = int(task.config.get("epochs", clock.epochs))
    epochs = clock.local_epochs(task.client_id, asked)
    return task if epochs == asked else replace(task, config={**task.config, "epochs": epochs})


@dataclass
class _Flight:
    """A started task: when it ends, whether its client left before, and its result once known."""

    task: Task
    blobs: Blobs
    ends: float
    dropped: bool = False
    result: Result | None = None  # set at start for a dropped task, when trained otherwise

    def order(self) -> tuple[float, int, int]:
        return (self.ends, self.task.round, self.task.client_id)


@dataclass
class VirtualTimeEngine:
    """An ``Asynchronous`` engine on the virtual clock, around a simulation ``engine``.

    Parameters
    ----------
    engine:
        Trains the tasks (sequential, vectorized, ray, or one wrapped around them).
    clock:
        When each client is online, how long its tasks take; ``clock.now`` is moved forward as
        tasks end.
    """

    engine: Engine
    clock: VirtualClock
    name: str = field(init=False)
    _flying: list[_Flight] = field(default_factory=list, init=False)
    _reported: float = field(default=0.0, init=False)
    _dropouts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.name = self.engine.name
        self._reported = self.clock.now

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        """Run ``tasks`` to their end on the wrapped engine, in no simulated time."""
        return self.engine.run(tasks, blobs)

    def start(self, tasks: Sequence[Task], blobs: Blobs) -> None:
        """Start ``tasks`` now; each ends when the clock says, or drops out when its client
        leaves first. A client has one task in flight at a time."""
        clock, now = self.clock, self.clock.now
        busy = {f.task.client_id for f in self._flying}
        for task in tasks:
            cid = task.client_id
            if cid in busy:
                raise ValueError(f"client {cid} already has a task in flight")
            busy.add(cid)
            task = with_local_epochs(task, clock)
            up = 0 if task.upload is None else task.upload.max_bytes()
            passes = task_passes(task, clock.epochs)
            done = now + clock.task_seconds(cid, bytes_down(task, blobs), up, passes)
            leaves = clock.online_until(cid, now)
            flight = _Flight(task, blobs, done)
            if leaves is None or leaves < done:
                flight.ends, flight.dropped = (now if leaves is None else leaves), True
                flight.result = Result(
                    task,
                    error=f"client {cid} went offline at {flight.ends:.6g} simulated s, "
                    f"before its task was done (at {done:.6g} s)",
                )
            self._flying.append(flight)

    def in_flight(self) -> list[Task]:
        """The started tasks that have not ended, in the order they started."""
        return [f.task for f in self._flying]

    def arrivals(self, most: int) -> Iterator[Result]:
        """Move the clock to the next task's end and yield that task's result (one, if ``most``
        is at least 1). With none in flight, move it to when the next offline client comes
        online, and yield nothing."""
        if most < 1:
            return
        if not self._flying:
            self._wait_for_a_client()
            return
        flight = min(self._flying, key=_Flight.order)
        self._flying.remove(flight)
        self.clock.now = max(self.clock.now, flight.ends)
        self._dropouts += flight.dropped
        if flight.result is None:
            self._train(flight)
        assert flight.result is not None
        yield flight.result

    def _train(self, needed: _Flight) -> None:
        """Train ``needed`` and every other started task not yet trained, in one batch."""
        batch = [needed, *(f for f in self._flying if f.result is None)]
        by_client = {f.task.client_id: f for f in batch}
        blobs: dict[str, Blob] = {}
        for f in batch:
            blobs.update(f.blobs)  # by content hash: the same digest is the same blob
        for result in self.engine.run([f.task for f in batch], blobs):
            by_client[result.task.client_id].result = result

    def _wait_for_a_client(self) -> None:
        clock, now = self.clock, self.clock.now
        offline = [
            c
            for c, n in sorted(clock.num_examples.items())
            if n > 0 and clock.online_until(c, now) is None
        ]
        later = clock.next_online(offline, now)
        if math.isfinite(later):
            clock.now = later

    def round_metrics(self) -> dict[str, float]:
        """The simulated seconds since the last call, the simulated time reached, and the
        tasks that dropped out (their client went offline) since the last call."""
        out = {
            "sim_seconds": self.clock.now - self._reported,
            "sim_time": self.clock.now,
            "dropouts": float(self._dropouts),
        }
        self._reported, self._dropouts = self.clock.now, 0
        return out

    def close(self) -> None:
        self._flying.clear()
        self.engine.close()
