"""The remote engine without a round barrier (``Asynchronous``, for FedBuff): tasks over a real gRPC
server on 127.0.0.1 stay in flight across exchanges, end in the order their clients finish, and
end as dropped at their own deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from fedloom.client.base import EvalResult, FitResult
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import FIT, MODEL, Blob, Result, Task, Upload, blob_table
from fedloom.engines.base import Asynchronous
from fedloom.engines.remote import RemoteEngine
from tests.transport.conftest import Running, Started, start_client, wait_ready

pytestmark = pytest.mark.deploy

SPEC = ParamSpec(names=("w",), shapes=((3,),), dtypes=("<f4",))
MODEL_BLOB = Blob.encode(SPEC, Float32Codec(), np.array([1, 2, 3], np.float32))


class GatedClient:
    """Each fit waits until the test opens the gate once, then uploads ``w + offset``."""

    num_examples = 1

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.gate = threading.Semaphore(0)

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        assert self.gate.acquire(timeout=30), "the test never opened the gate"
        return FitResult(update={"w": params["w"] + self.offset}, num_examples=1)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=1)


def _fit(round_num: int, cid: int) -> Task:
    return Task(FIT, round_num, cid, {}, {MODEL: MODEL_BLOB.digest}, Upload("float32", SPEC.size))


@pytest.fixture
def gated(plain_server: Running) -> Iterator[tuple[Running, list[GatedClient]]]:
    clients = [GatedClient(10.0 * (i + 1)) for i in range(3)]
    started: list[Started] = []
    for i in range(3):
        started.append(start_client(plain_server, None, f"client-{i}", clients.__getitem__))
        wait_ready(plain_server, i + 1)  # ids follow the order of joining: client-i is i
    yield plain_server, clients
    for c in clients:
        c.gate.release(5)  # let a fit still waiting finish, so the client can exit
    plain_server.hub.finish()
    assert [s.join() for s in started] == [0, 0, 0]


def _values(result: Result) -> list[float]:
    assert result.ok, result.error
    return [float(v) for v in np.frombuffer(result.payload or b"", "<f4")]


def test_tasks_outlive_their_exchange_and_end_in_the_order_clients_finish(
    gated: tuple[Running, list[GatedClient]],
) -> None:
    # Prepare
    running, clients = gated
    engine = RemoteEngine(running.hub, deadline_s=30)
    assert isinstance(engine, Asynchronous)
    blobs = blob_table(MODEL_BLOB)

    # Execute: three tasks of round 1 start; client 1 finishes first
    engine.start([_fit(1, 0), _fit(1, 1), _fit(1, 2)], blobs)
    clients[1].gate.release()
    first = list(engine.arrivals(3))
    left_after_first = sorted(t.client_id for t in engine.in_flight())
    # client 1 starts again in round 2; then the two of round 1 and the one of round 2 finish
    engine.start([_fit(2, 1)], blobs)
    for c in clients:
        c.gate.release()
    rest: list[Result] = []
    while len(rest) < 3:
        rest += list(engine.arrivals(1))

    # Assert: one exchange ended with client 1 alone, the others stayed in flight
    assert [(r.task.round, r.task.client_id) for r in first] == [(1, 1)]
    assert _values(first[0]) == [21, 22, 23]
    assert left_after_first == [0, 2]
    # the round-1 tasks came back in a later exchange, still as round-1 tasks
    assert sorted((r.task.round, r.task.client_id) for r in rest) == [(1, 0), (1, 2), (2, 1)]
    assert sorted(_values(r)[0] for r in rest) == [11, 21, 31]
    assert engine.in_flight() == []
    assert running.hub.blob(MODEL_BLOB.digest) is None  # no task names it: released
    # with nothing in flight, arrivals yields nothing at once
    begun = time.monotonic()
    assert list(engine.arrivals(1)) == []
    assert time.monotonic() - begun < 1.0


def test_a_task_past_its_deadline_ends_as_dropped_and_frees_nothing_else(
    gated: tuple[Running, list[GatedClient]],
) -> None:
    # Prepare: a deadline of 1 s per task
    running, clients = gated
    engine = RemoteEngine(running.hub, deadline_s=1.0, tick_s=0.05)
    blobs = blob_table(MODEL_BLOB)

    # Execute: client 0 never finishes in time; client 2's task starts later and is in time
    engine.start([_fit(1, 0)], blobs)
    time.sleep(0.5)
    engine.start([_fit(1, 2)], blobs)
    begun = time.monotonic()
    dropped = list(engine.arrivals(2))
    waited = time.monotonic() - begun
    still = [t.client_id for t in engine.in_flight()]
    clients[2].gate.release()
    kept = list(engine.arrivals(2))

    # Assert: client 0's task ended at its own deadline (about 0.5 s after the wait began),
    # as dropped, without waiting for client 2's
    assert [r.task.client_id for r in dropped] == [0]
    assert dropped[0].error == "no result within 1 s (server.round_deadline_s)"
    assert 0.3 < waited < 5.0
    assert engine.last_stats.dropped == 1
    assert still == [2]
    assert [r.task.client_id for r in kept] == [2] and _values(kept[0]) == [31, 32, 33]
