"""The Asynchronous engine on virtual time: when started tasks arrive, which drop out, how the clock
waits for a client, and that training is deferred and batched, against hand-computed times."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from fedloom.core.codec import Float32Codec
from fedloom.core.params import ParamSpec
from fedloom.core.task import FIT, MODEL, Blob, Blobs, Result, Task, Upload, blob_table
from fedloom.engines import SequentialEngine
from fedloom.engines.base import Asynchronous
from fedloom.engines.virtual_time import VirtualTimeEngine
from fedloom.server.clock import Availability, ClientClock, ClientProfile
from tests.strategies.test_fedbuff import FixedClient, simulated_fedbuff, task_clock

SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))
MODEL_BLOB = Blob.encode(SPEC, Float32Codec(), np.zeros(2, np.float32))
BLOBS = blob_table(MODEL_BLOB)


class Batches(SequentialEngine):
    """The sequential engine, recording the clients of each ``run`` call."""

    def __init__(self, clients: dict[int, FixedClient]) -> None:
        super().__init__(clients.__getitem__)
        self.batches: list[list[int]] = []

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        self.batches.append([t.client_id for t in tasks])
        yield from super().run(tasks, blobs)


def _engine(
    seconds: dict[int, float], online: dict[int, list[tuple[float, float]]] | None = None
) -> tuple[VirtualTimeEngine, Batches, ClientClock]:
    """Client c's task takes ``seconds[c]`` (one example at 1/seconds a second, no transfer);
    it is online in ``online[c]`` (default: always)."""
    clock = ClientClock(
        profiles={c: ClientProfile(speed=1 / s, bandwidth=math.inf) for c, s in seconds.items()},
        num_examples=dict.fromkeys(seconds, 1),
        availability=Availability(0, None, 1.0, online),
    )
    inner = Batches({c: FixedClient([c, 0]) for c in seconds})
    return VirtualTimeEngine(inner, clock), inner, clock


def _tasks(*clients: int, round_num: int = 1) -> list[Task]:
    return [
        Task(FIT, round_num, c, {}, {MODEL: MODEL_BLOB.digest}, Upload("float32", 2))
        for c in clients
    ]


def _arrival(engine: VirtualTimeEngine) -> list[tuple[int, bool]]:
    return [(r.task.client_id, r.ok) for r in engine.arrivals(5)]


def test_tasks_arrive_one_at_a_time_in_the_order_they_end() -> None:
    # Prepare: tasks of 3, 1 and 2 s started at 0; client 3's (1 s) starts at 1
    engine, _, clock = _engine({0: 3.0, 1: 1.0, 2: 2.0, 3: 1.0})
    assert isinstance(engine, Asynchronous)
    engine.start(_tasks(0, 1, 2), BLOBS)

    # Execute and Assert: one task per call, the clock at its end; 2 and 3 tie at 2 s and are
    # then ordered by client id
    assert _arrival(engine) == [(1, True)] and clock.now == 1.0
    engine.start(_tasks(3), BLOBS)
    assert [t.client_id for t in engine.in_flight()] == [0, 2, 3]
    assert _arrival(engine) == [(2, True)] and clock.now == 2.0
    assert _arrival(engine) == [(3, True)] and clock.now == 2.0
    assert _arrival(engine) == [(0, True)] and clock.now == 3.0
    assert _arrival(engine) == [] and clock.now == 3.0  # nothing in flight, nobody offline
    assert engine.round_metrics() == {"sim_seconds": 3.0, "sim_time": 3.0, "dropouts": 0.0}


def test_training_waits_until_a_result_is_needed_then_takes_every_started_task() -> None:
    # Prepare: 0, 1 and 2 start at 0; 3 starts at 1, after 1 arrives
    engine, inner, _ = _engine({0: 3.0, 1: 1.0, 2: 2.0, 3: 5.0})

    # Execute
    engine.start(_tasks(0, 1, 2), BLOBS)
    assert inner.batches == []  # nothing trained yet
    first = _arrival(engine)
    engine.start(_tasks(3), BLOBS)
    rest = [_arrival(engine) for _ in range(3)]

    # Assert: 1's arrival trained 1, 0 and 2 in one batch; 3 trained when it arrived
    assert first == [(1, True)] and rest == [[(2, True)], [(0, True)], [(3, True)]]
    assert inner.batches == [[1, 0, 2], [3]]


def test_a_client_that_goes_offline_drops_out_then_untrained() -> None:
    # Prepare: client 0's task takes 4 s but it is online until 2.5 s
    engine, inner, clock = _engine({0: 4.0, 1: 3.0}, online={0: [(0.0, 2.5)]})

    # Execute
    engine.start(_tasks(0, 1), BLOBS)
    (dropped,) = engine.arrivals(1)

    # Assert: it ends at 2.5 with an error Result and was never trained
    assert not dropped.ok and "went offline at 2.5 simulated s" in str(dropped.error)
    assert clock.now == 2.5 and inner.batches == []
    assert _arrival(engine) == [(1, True)] and inner.batches == [[1]]
    assert engine.round_metrics()["dropouts"] == 1.0


@pytest.mark.parametrize(("online", "now"), [({1: [(4.0, 9.0)]}, 4.0), ({1: []}, 0.0)])
def test_with_nothing_in_flight_the_clock_moves_to_when_a_client_comes_online(
    online: dict[int, list[tuple[float, float]]], now: float
) -> None:
    # Prepare: client 0 always online, client 1 online from 4 s (or never)
    engine, _, clock = _engine({0: 1.0, 1: 1.0}, online=online)

    # Execute and Assert: nothing arrives; the clock moves to 4, or nowhere
    assert _arrival(engine) == [] and clock.now == now


def test_a_client_has_one_task_in_flight_at_a_time() -> None:
    engine, _, _ = _engine({0: 1.0})
    engine.start(_tasks(0), BLOBS)
    with pytest.raises(ValueError, match="client 0 already has a task in flight"):
        engine.start(_tasks(0, round_num=2), BLOBS)


def test_a_task_whose_client_will_leave_keeps_its_slot_until_it_drops_out() -> None:
    # Prepare: K = 1, C = 2; client 0 takes 1 s, client 1 takes 5 s but leaves at 3 s
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 2])}
    clock = task_clock({0: 1.0, 1: 5.0}, online={1: [(0.0, 3.0)]})

    # Execute
    coord = simulated_fedbuff(clients, clock, rounds=3, buffer_size=1, concurrency=2)

    # Assert: 0 and 1 start at 0; 0 steps at 1, 2 and 3, starting again after each. Client 1's
    # task is in flight (nobody knows it will fail) until it drops out at 3, before client 0's
    # arrival then (the older task first), and client 1 is never started twice
    assert [r["selected"] for r in coord.history] == [2, 1, 1]
    assert [r["in_flight"] for r in coord.history] == [1, 1, 0]
    assert [(r["dropouts"], r["failed"]) for r in coord.history] == [(0, 0), (0, 0), (1, 1)]
    assert [r["sim_time"] for r in coord.history] == [1.0, 2.0, 3.0]
    np.testing.assert_allclose(coord.params, [3.0, 0.0])
    assert clients[1].seen == []
