"""Engines execute client tasks. The coordinator's round loop never knows how.

An engine is constructed with a ``client_fn(client_id) -> Client`` and yields one ``Result`` per task
as soon as it is ready, so the coordinator can aggregate in a stream. ``execute_task`` is the
client-side half of one exchange (decode params, run the client, encode the update) and is shared by
every engine that runs clients in Python.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fedloom.client.base import Client
from fedloom.core.params import Params
from fedloom.core.task import EVALUATE, FIT, GlobalParams, Result, Task

ClientFn = Callable[[int], Client]


class Engine(Protocol):
    name: str

    def run(self, tasks: Sequence[Task], global_params: GlobalParams) -> Iterator[Result]:
        """Execute ``tasks`` against ``global_params``; yield results in completion order."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Transfer:
    """Payload bytes one ``Engine.run`` moved: params down to clients, updates up from them."""

    bytes_down: int
    bytes_up: int


@runtime_checkable
class MeasuresTransfer(Protocol):
    """An engine that measures its traffic, for the round's ``bytes_down`` and ``bytes_up``.

    Without it the coordinator counts what an in-process engine moves: the params once for every
    task, and every update it receives. An engine on a real network knows better: a client with the
    params in its content-hash cache downloads nothing, and a refused upload still crossed the wire.
    """

    def last_transfer(self) -> Transfer:
        """The payload bytes of the latest ``run``, complete once its iterator is exhausted."""
        ...


def execute_task(client: Client, task: Task, params: Params, global_params: GlobalParams) -> Result:
    """Run one task on one client. A client that raises yields an error Result, never a crash."""
    start = time.perf_counter()
    try:
        if task.kind == FIT:
            fit = client.fit(params, task.config)
            vec = global_params.spec.as_vector(fit.update)
            return Result(
                task,
                num_examples=int(fit.num_examples),
                payload=global_params.codec.encode(vec),
                metrics=dict(fit.metrics),
                seconds=time.perf_counter() - start,
            )
        if task.kind == EVALUATE:
            ev = client.evaluate(params, task.config)
            return Result(
                task,
                num_examples=int(ev.num_examples),
                metrics={"loss": float(ev.loss), **ev.metrics},
                seconds=time.perf_counter() - start,
            )
        raise ValueError(f"this client does not handle task kind {task.kind!r}")
    except Exception as exc:  # one client's failure must not stop the round
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" at {where.filename}:{where.lineno}" if where else ""
        return Result(
            task, error=f"{type(exc).__name__}: {exc}{at}", seconds=time.perf_counter() - start
        )
