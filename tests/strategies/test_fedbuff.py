"""FedBuff: staleness weights, the buffered server step and its event schedule, hand-computed; and
a simulated run that is deterministic and the same on the sequential and vectorized engines."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedloom.app.user_code import build_strategy
from fedloom.client.base import EvalResult, FitResult
from fedloom.config import validate_config
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import Blobs, Result, Task
from fedloom.engines import SequentialEngine
from fedloom.engines.virtual_time import VirtualTimeEngine
from fedloom.errors import ConfigError
from fedloom.server.clock import Availability, ClientClock, ClientProfile, ClockedPopulation
from fedloom.server.coordinator import Coordinator, Population
from fedloom.simulation import Simulation
from fedloom.strategies import FedBuff
from fedloom.strategies.factory import make_strategy
from fedloom.strategies.fedbuff import buffered_update, staleness_weight


def test_the_staleness_weight_is_one_over_the_root_of_one_plus_staleness() -> None:
    np.testing.assert_allclose(staleness_weight(np.array([0, 1, 3, 8])), [1, 2**-0.5, 0.5, 1 / 3])


def test_the_buffered_update_is_the_mean_of_staleness_weighted_deltas() -> None:
    # (1/2) * (1 * [1, 0] + 1/2 * [0, 2]) = [0.5, 0.5]
    got = buffered_update([np.array([1, 0], np.float32), np.array([0, 2], np.float32)], [0, 3])
    np.testing.assert_allclose(got, [0.5, 0.5])


SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))


class FixedClient:
    """Uploads a fixed delta; remembers the model it started from each time."""

    def __init__(self, delta: list[float]) -> None:
        self.delta = np.array(delta, np.float32)
        self.seen: list[list[float]] = []

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        self.seen.append(np.asarray(params["w"]).tolist())
        return FitResult(update={"w": self.delta}, num_examples=1)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=1)


def task_clock(
    seconds: dict[int, float], online: dict[int, list[tuple[float, float]]] | None = None
) -> ClientClock:
    """Client c's task (one example, one epoch, no transfer time) takes ``seconds[c]``; it is
    online in ``online[c]`` (default: always)."""
    return ClientClock(
        profiles={c: ClientProfile(speed=1 / s, bandwidth=math.inf) for c, s in seconds.items()},
        num_examples=dict.fromkeys(seconds, 1),
        availability=Availability(0, None, 1.0, online),
    )


def simulated_fedbuff(
    clients: dict[int, FixedClient],
    clock: ClientClock,
    rounds: int,
    buffer_size: int = 2,
    concurrency: int = 3,
) -> Coordinator:
    """FedBuff in simulation, as ``fedloom run`` wires it: on the virtual-time engine, selecting
    among the clients online."""
    coord = Coordinator(
        strategy=FedBuff(buffer_size=buffer_size, concurrency=concurrency),
        engine=VirtualTimeEngine(SequentialEngine(clients.__getitem__), clock),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=ClockedPopulation(dict.fromkeys(clients, 1), clock=clock),
    )
    coord.run(rounds)
    return coord


def test_the_server_steps_as_soon_as_k_updates_arrive_weighting_stale_ones_down() -> None:
    # Prepare: K = 2, C = 3; client tasks take 1, 4 and 2.5 s
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 2]), 2: FixedClient([2, 2])}
    clock = task_clock({0: 1.0, 1: 4.0, 2: 2.5})

    # Execute
    coord = simulated_fedbuff(clients, clock, rounds=3)

    # Assert, event by event. Version 0: all three start at t=0; 0 arrives at 1, 2 at 2.5: step
    # (1/2)([1, 0] + [2, 2]) -> w1 = [1.5, 1]; client 1 is still at work.
    # Version 1: 0 and 2 start at 2.5 from w1; 0 arrives at 3.5 (staleness 0), 1 at 4 (started
    # from version 0: staleness 1): (1/2)([1, 0] + [0, 2] / sqrt 2) -> w2 = w1 + [0.5, 1/sqrt 2].
    # Version 2: 0 and 1 start at 4; 2 (from version 1) and 0 both arrive at 5, the older first:
    # (1/2)([2, 2] / sqrt 2 + [1, 0]) -> w3 = w2 + [(sqrt 2 + 1) / 2, sqrt 2 / 2]. Client 2,
    # idle again at 5 and not yet trained on version 2, starts from w2 between the two.
    r2 = 2**0.5
    w1 = np.array([1.5, 1.0])
    w2 = w1 + np.array([0.5, 1 / r2])
    w3 = w2 + np.array([(r2 + 1) / 2, r2 / 2])
    np.testing.assert_allclose(coord.params, w3, rtol=1e-6)
    assert [r["sim_time"] for r in coord.history] == [2.5, 4.0, 5.0]
    assert [r["staleness_max"] for r in coord.history] == [0, 1, 1]
    assert [r["selected"] for r in coord.history] == [3, 2, 3]
    # each update records the model version it started from: client 1's first run saw w0
    assert clients[1].seen == [[0.0, 0.0], pytest.approx(w2.tolist())]
    assert clients[2].seen == [[0.0, 0.0], pytest.approx(w1.tolist()), pytest.approx(w2.tolist())]
    assert coord.history[-1]["in_flight"] == 2  # clients 1 (until 8) and 2 (until 7.5)


def test_a_client_that_leaves_mid_task_sends_nothing_and_frees_its_slot() -> None:
    # Prepare: client 1 (4 s) leaves at 2 s; K = 2
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 2]), 2: FixedClient([2, 2])}
    clock = task_clock({0: 1.0, 1: 4.0, 2: 2.5}, online={1: [(0.0, 2.0)]})

    # Execute
    coord = simulated_fedbuff(clients, clock, rounds=1)

    # Assert: 0 at 1, 1 gone at 2 (its task ends there, failed, as a deployment's would), 2 at
    # 2.5: the same step as without it; 1 was started (selected) but never trained
    (record,) = coord.history
    assert (record["selected"], record["returned"], record["failed"]) == (3, 2, 1)
    assert record["dropouts"] == 1 and clients[1].seen == []
    np.testing.assert_allclose(coord.params, [1.5, 1.0])


def test_with_nobody_online_and_nothing_in_flight_the_round_waits_for_a_client() -> None:
    # Prepare: K = 1. Client 1 (2 s) is online until 1 s; client 0 (1 s) comes online at 3 s
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 2])}
    clock = task_clock({0: 1.0, 1: 2.0}, online={0: [(3.0, math.inf)], 1: [(0.0, 1.0)]})

    # Execute
    coord = simulated_fedbuff(clients, clock, rounds=1, buffer_size=1)

    # Assert: 1 starts at 0 and drops out at 1; nobody is online, so the clock moves to 3, when
    # 0 comes online, starts, and arrives at 4 with the one update the step needs
    (record,) = coord.history
    assert record["sim_time"] == 4.0 and record["dropouts"] == 1 and record["selected"] == 2
    np.testing.assert_allclose(coord.params, [1.0, 0.0])


def test_the_step_takes_what_arrived_when_no_idle_client_ever_comes_online() -> None:
    # Prepare: K = 3, but client 2 is never online: the buffer cannot fill
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 2]), 2: FixedClient([4, 4])}
    clock = task_clock({0: 1.0, 1: 1.0, 2: 1.0}, online={2: []})

    # Execute
    coord = simulated_fedbuff(clients, clock, rounds=1, buffer_size=3)

    # Assert: 0 and 1 arrive at 1; waiting for client 2 moves the clock nowhere, so the step
    # takes the two, (1/2)([1, 0] + [0, 2])
    (record,) = coord.history
    assert (record["status"], record["returned"], record["sim_time"]) == ("ok", 2, 1.0)
    np.testing.assert_allclose(coord.params, [0.5, 1.0])


def test_fedbuff_without_a_clock_or_with_synchronous_settings_is_refused() -> None:
    # a simulation without the virtual clock: nothing would say when a client finishes
    with pytest.raises(ConfigError, match=r"clients\.enabled=true"):
        Simulation(validate_config({"strategy": {"name": "fedbuff"}})).coordinator()
    on = {"clients": {"enabled": True}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"aggregator": "median"}, "strategy.aggregator"),
        ({"fraction_fit": 0.5}, "strategy.fraction_fit"),
    ]
    for strategy, key in cases:
        cfg = validate_config({**on, "strategy": {"name": "fedbuff", **strategy}})
        with pytest.raises(ConfigError, match=re.escape(key)):
            make_strategy(cfg)
    # what fedloom server builds its strategy with: real time, no clock, no synchronous extras
    fedbuff = {"strategy": {"name": "fedbuff"}}
    built = build_strategy(validate_config(fedbuff), None)
    assert isinstance(built, FedBuff) and built.asynchronous
    deployment_cases: list[tuple[dict[str, Any], str]] = [
        (on, r"clients\.enabled: the clients section simulates"),
        ({"server": {"over_selection": 0.5}}, r"server\.over_selection: fedbuff keeps"),
        ({"pruning": {"enabled": True}}, r"pruning\.enabled: fedbuff's updates arrive"),
    ]
    for extra, message in deployment_cases:
        with pytest.raises(ConfigError, match=message):
            build_strategy(validate_config({**fedbuff, **extra}), None)
    # without a clock, on an engine that runs each exchange to its end
    coord = Coordinator(
        strategy=FedBuff(buffer_size=1, concurrency=1),
        engine=SequentialEngine(lambda cid: FixedClient([1, 0])),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population({0: 1}),
    )
    with pytest.raises(ConfigError, match=r"asynchronous engine .* 'sequential' engine"):
        coord.run(1)


class ScriptedEngine:
    """An ``Asynchronous`` engine on logical time, for the deployment path: a task runs its
    client when it starts and ends ``ticks[client]`` ticks later; ``arrivals`` moves time to the
    next end and yields the tasks that end then, in the order they started."""

    name = "scripted"

    def __init__(self, clients: dict[int, FixedClient], ticks: dict[int, int]) -> None:
        self.inner = SequentialEngine(clients.__getitem__)
        self.ticks = ticks
        self.now = 0
        self.flying: list[tuple[int, Result]] = []  # (tick it ends at, result), by start
        self.arrival_ticks: list[int] = []
        self.evaluated: list[int] = []  # clients given a task by ``run`` (evaluation)

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        self.evaluated += [t.client_id for t in tasks]
        return self.inner.run(tasks, blobs)

    def start(self, tasks: Sequence[Task], blobs: Blobs) -> None:
        for result in self.inner.run(tasks, blobs):
            self.flying.append((self.now + self.ticks[result.task.client_id], result))

    def in_flight(self) -> list[Task]:
        return [r.task for _, r in self.flying]

    def arrivals(self, most: int) -> Iterator[Result]:
        if not self.flying:
            return
        self.now = min(end for end, _ in self.flying)
        ending = [(end, r) for end, r in self.flying if end == self.now][:most]
        for item in ending:
            self.flying.remove(item)
            self.arrival_ticks.append(self.now)
            yield item[1]

    def close(self) -> None:
        self.inner.close()


def _deployed(
    clients: dict[int, FixedClient],
    engine: ScriptedEngine,
    buffer_size: int,
    concurrency: int,
    **options: Any,
) -> Coordinator:
    """FedBuff without a clock (as ``fedloom server`` builds it) on the scripted engine."""
    return Coordinator(
        strategy=FedBuff(buffer_size=buffer_size, concurrency=concurrency),
        engine=engine,
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population(dict.fromkeys(clients, 1), **options.pop("population", {})),
        **options,
    )


def test_in_a_deployment_the_server_steps_on_k_updates_and_the_rest_stay_in_flight() -> None:
    # Prepare: K = 2, C = 3; tasks take 1, 2 and 5 ticks of real time, no clock
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 2]), 2: FixedClient([4, 4])}
    engine = ScriptedEngine(clients, {0: 1, 1: 2, 2: 5})
    coord = _deployed(clients, engine, 2, 3)

    # Execute
    coord.run(3)

    # Assert, round by round. Round 1: all three start from w0 at tick 0; 0 ends at 1, 1 at 2:
    # (1/2)([1, 0] + [0, 2]) -> w1 = [0.5, 1]; client 2 stays in flight.
    # Round 2: 0 and 1 start from w1 at 2 (2 is busy); 0 ends at 3, 1 at 4: w2 = w1 + [0.5, 1].
    # Round 3: 0 and 1 start from w2 at 4; at 5 client 2's task of round 1 (staleness 2) and
    # client 0's end together: (1/2)([4, 4] / sqrt 3 + [1, 0]) -> w3 = w2 + that.
    r3 = 3**0.5
    w3 = np.array([1.0, 2.0]) + np.array([(4 / r3 + 1) / 2, (4 / r3) / 2])
    np.testing.assert_allclose(coord.params, w3, rtol=1e-6)
    assert engine.arrival_ticks == [1, 2, 3, 4, 5, 5]
    assert [r["staleness_max"] for r in coord.history] == [0, 0, 2]
    assert [r["selected"] for r in coord.history] == [3, 2, 2]
    assert [r["returned"] for r in coord.history] == [2, 2, 2]
    assert [r["in_flight"] for r in coord.history] == [1, 1, 1]  # 2, 2, then 1 (ends at 6)
    assert clients[2].seen == [[0.0, 0.0]]
    assert clients[0].seen == [[0, 0], [0.5, 1], [1, 2]]
    assert coord.strategy_state["fedbuff/version"].tolist() == [3]


def test_in_a_deployment_a_round_ends_short_when_no_client_is_left_to_start() -> None:
    # Prepare: K = 3 but only two clients, each training at most once per model version
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 2])}
    coord = _deployed(clients, ScriptedEngine(clients, {0: 1, 1: 1}), 3, 2)

    # Execute
    (record,) = coord.run(1)

    # Assert: the step takes the two updates it has, (1/2)([1, 0] + [0, 2])
    assert record["status"] == "ok" and record["returned"] == 2 and record["in_flight"] == 0
    np.testing.assert_allclose(coord.params, [0.5, 1.0])


def test_in_a_deployment_federated_evaluation_leaves_out_the_clients_still_training() -> None:
    # Prepare: round 1 as above: client 2 (5 ticks) is still training when round 1 evaluates
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 2]), 2: FixedClient([4, 4])}
    engine = ScriptedEngine(clients, {0: 1, 1: 2, 2: 5})
    coord = _deployed(
        clients, engine, 2, 3, population={"has_test_data": set(clients)}, federated_eval=True
    )

    # Execute
    (record,) = coord.run(1)

    # Assert: clients 0 and 1 were evaluated (FixedClient scores loss 0 on one example), 2 not
    assert record["fed_eval_busy"] == 1
    assert record["fed_loss"] == 0.0
    assert engine.evaluated == [0, 1]


class CrashingClient(FixedClient):
    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        raise RuntimeError("local training crashed (on purpose)")


def test_in_a_deployment_a_client_whose_task_failed_is_not_asked_again_in_that_round() -> None:
    # Prepare: K = 2, C = 3; client 2's task, of round 1, fails at tick 3, in round 2
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 2]), 2: CrashingClient([0, 0])}
    coord = _deployed(clients, ScriptedEngine(clients, {0: 1, 1: 2, 2: 3}), 2, 3)

    # Execute
    coord.run(3)

    # Assert: round 2 started 0 and 1 only, and did not restart 2 when its failure came in
    # with client 0's update at tick 3; round 3 asks it again
    assert [r["selected"] for r in coord.history] == [3, 2, 3]
    assert [(r["returned"], r["failed"]) for r in coord.history] == [(2, 0), (2, 1), (2, 0)]


def _run(engine: str, tmp_path: Path) -> list[dict[str, Any]]:
    cfg = validate_config(
        {
            "rounds": 4,
            "partition": {"num_clients": 12},
            "model": {"hidden": [16]},
            "client": {"epochs": 2, "lr": 0.05},
            "engine": {"name": engine},
            "strategy": {"name": "fedbuff", "buffer_size": 3, "concurrency": 6},
            "clients": {
                "enabled": True,
                "speed_sigma": 1.0,
                "mean_online_s": 3.0,
                "mean_offline_s": 1.0,
                "local_seconds": 1.0,
            },
        }
    )
    return Simulation(cfg).coordinator().run(cfg.rounds)


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from more on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_a_fedbuff_simulation_is_deterministic_and_the_same_on_every_engine(
    tmp_path: Path,
) -> None:
    # Execute
    sequential = _run("sequential", tmp_path)
    again = _run("sequential", tmp_path)
    vectorized = _run("vectorized", tmp_path)

    # Assert: the schedule is exact; the models agree within float tolerance
    timing = ("sim_time", "selected", "dropouts", "staleness_max", "in_flight")
    assert [r["loss"] for r in sequential] == [r["loss"] for r in again]
    for a, b in zip(sequential, vectorized, strict=True):
        assert {k: a[k] for k in timing} == {k: b[k] for k in timing}
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert sum(r["dropouts"] for r in sequential) > 0  # availability took part


@pytest.mark.ray
@pytest.mark.usefixtures("one_thread")
def test_a_fedbuff_simulation_on_ray_is_the_same_as_on_the_sequential_engine(
    tmp_path: Path,
) -> None:
    # Prepare: the test session's local Ray instance, which the run's RayEngine joins
    from tests.engines.test_ray_engine import shared_ray_engine

    shared_ray_engine(lambda cid: FixedClient([0, 0])).close()

    # Execute
    sequential = _run("sequential", tmp_path)
    ray = _run("ray", tmp_path)

    # Assert: the same schedule, the same model within float tolerance
    timing = ("sim_time", "selected", "dropouts", "staleness_max", "in_flight")
    for a, b in zip(sequential, ray, strict=True):
        assert {k: a[k] for k in timing} == {k: b[k] for k in timing}
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
