"""Engines execute client tasks. The coordinator's round loop never knows how.

An engine is constructed with a ``client_fn(client_id) -> Client`` and yields one ``Result`` per task
as soon as it is ready, so the coordinator can aggregate in a stream. ``Engine.run`` receives the
tasks of one stage and every blob they name, by content hash. In simulation the engine owns the
clients' state (``ClientStateStore``): it hands each task its client's state and keeps what comes
back, whichever process the client ran in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fedloom.client.base import Client
from fedloom.client.execute import DecodedBlobs, error_result, execute_task, state_round
from fedloom.client.state import ClientStateStore
from fedloom.core.task import Blobs, Result, Task

ClientFn = Callable[[int], Client]


class Engine(Protocol):
    name: str

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        """Execute ``tasks`` with the ``blobs`` they name (by digest); yield results in
        completion order."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Transfer:
    """Payload bytes one ``Engine.run`` moved: blobs down to clients, uploads up from them."""

    bytes_down: int
    bytes_up: int


@runtime_checkable
class MeasuresTransfer(Protocol):
    """An engine that measures its traffic, for the round's ``bytes_down`` and ``bytes_up``.

    Without it the coordinator counts what an in-process engine moves: every blob a task names,
    once per task, and every upload it receives. An engine on a real network knows better: a
    client with a blob in its content-hash cache downloads nothing, and a refused upload still
    crossed the wire.
    """

    def last_transfer(self) -> Transfer:
        """The payload bytes of the latest ``run``, complete once its iterator is exhausted."""
        ...


@runtime_checkable
class OverSelects(Protocol):
    """An engine that may ask more clients than a stage's tasks name (a deployment's
    over-selection). Only a round's first stage may: a later stage of a multi-stage protocol must
    reach exactly the clients that took part in the stages before it."""

    def allow_over_selection(self, allowed: bool) -> None:
        """Whether the next ``run`` may over-select."""
        ...


@runtime_checkable
class Asynchronous(Protocol):
    """An engine whose tasks may outlive the exchange that started them: a round without a barrier
    (FedBuff; ``Exchange.until``). The remote engine of ``fedloom server`` is one, on real time;
    in simulation ``fedloom.engines.virtual_time.VirtualTimeEngine`` makes any engine one, on the
    virtual clock of simulated clients."""

    def start(self, tasks: Sequence[Task], blobs: Blobs) -> None:
        """Hand ``tasks`` to their clients and return at once."""
        ...

    def arrivals(self, most: int) -> Iterator[Result]:
        """Wait until a started task ends (whichever exchange started it), then yield it and the
        others that have ended, at most ``most``; nothing when no task is in flight."""
        ...

    def in_flight(self) -> list[Task]:
        """The started tasks that have not ended."""
        ...


def keep_state(states: ClientStateStore, result: Result) -> Result:
    """Store the state a successful task left in ``states``; the Result no longer carries it."""
    if result.ok and result.state is not None:
        states.put(result.task.client_id, result.task.round, result.state)
    result.state = None
    return result


def run_one(
    client_fn: ClientFn,
    task: Task,
    blobs: Blobs,
    states: ClientStateStore,
    decoded: DecodedBlobs,
    client: Client | None = None,
) -> Result:
    """Build the task's client (unless given) and run the task with the client's state."""
    if client is None:
        try:
            client = client_fn(task.client_id)
        except Exception as exc:  # a broken client factory fails that client only
            return error_result(task, exc)
    state = states.get(task.client_id, state_round(task))
    return keep_state(states, execute_task(client, task, blobs, state, decoded))


__all__ = [
    "Asynchronous",
    "ClientFn",
    "Engine",
    "MeasuresTransfer",
    "OverSelects",
    "Transfer",
    "error_result",
    "execute_task",
    "keep_state",
    "run_one",
]
