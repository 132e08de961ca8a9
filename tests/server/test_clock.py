"""The virtual clock: task times, drawn and traced profiles, availability, synchronous rounds with a
deadline, and variable local work, against hand-computed numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedloom.client.base import EvalResult, FitResult
from fedloom.config import ClientsConfig, validate_config
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import Result
from fedloom.engines import SequentialEngine
from fedloom.errors import ConfigError
from fedloom.server.clock import (
    Availability,
    ClientClock,
    ClientProfile,
    ClockedEngine,
    ClockedPopulation,
)
from fedloom.server.coordinator import Coordinator
from fedloom.simulation import Simulation
from fedloom.strategies import FedAvg, FedSGD, Strategy


def test_a_task_takes_its_bytes_over_the_bandwidth_plus_its_examples_over_the_speed() -> None:
    # Prepare: client 0: 50 examples at 100/s, 1e6 B/s; client 1: 20 examples at 10/s, 1e5 B/s
    clock = ClientClock(
        profiles={0: ClientProfile(100.0, 1e6), 1: ClientProfile(10.0, 1e5)},
        num_examples={0: 50, 1: 20},
        availability=Availability(0, None, 1.0),
    )

    # Execute / Assert: (500,000 + 250,000) B / 1e6 B/s + 2 * 50 / 100 = 0.75 + 1
    assert clock.task_seconds(0, 500_000, 250_000, 2) == pytest.approx(1.75)
    # 750,000 / 1e5 + 1 * 20 / 10 = 7.5 + 2
    assert clock.task_seconds(1, 500_000, 250_000, 1) == pytest.approx(9.5)


def test_a_trace_file_sets_speeds_and_bandwidths_and_the_rest_are_drawn(tmp_path: Path) -> None:
    # Prepare: client 1 from the trace (8 Mbit/s = 1e6 B/s); the others at the medians (sigma 0)
    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,speed,bandwidth_mbps\n1,25,8\n")
    cfg = ClientsConfig(enabled=True, speed=40.0, bandwidth_mbps=16.0, trace=str(trace))

    # Execute
    clock = ClientClock.from_config(cfg, seed=0, num_examples={0: 5, 1: 5, 2: 5}, epochs=1)

    # Assert
    assert clock.profiles[1] == ClientProfile(25.0, 1e6)
    assert clock.profiles[0] == clock.profiles[2] == ClientProfile(40.0, 2e6)


def test_speeds_are_lognormal_around_the_median_and_seeded() -> None:
    cfg = ClientsConfig(enabled=True, speed=50.0, speed_sigma=1.0, bandwidth_sigma=0.5)
    sizes = dict.fromkeys(range(2000), 10)

    a = ClientClock.from_config(cfg, seed=3, num_examples=sizes, epochs=1)
    b = ClientClock.from_config(cfg, seed=3, num_examples=sizes, epochs=1)
    c = ClientClock.from_config(cfg, seed=4, num_examples=sizes, epochs=1)

    assert a.profiles == b.profiles and a.profiles != c.profiles
    logs = np.log([p.speed for p in a.profiles.values()])
    assert np.median(logs) == pytest.approx(math.log(50.0), abs=0.1)
    assert np.std(logs) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("t.csv", "client_id,speed\n0,10\n7,10\n", "names client ids this run does not have: 7"),
        ("t.csv", "client_id,speed\n0,-1\n", "speed must be a positive number"),
        ("t.csv", "client_id,speed\n0,1\n0,2\n", "client_id 0 appears twice"),
        ("t.csv", "client_id,speeed\n0,1\n", "unknown keys ['speeed']"),
        ("t.json", '[{"client_id": 0, "online": [[5, 1]]}]', "online intervals must be"),
        ("t.json", '{"0": 1}', "a list of objects"),
        ("t.txt", "", "must end in .csv or .json"),
    ],
)
def test_a_bad_trace_is_a_config_error_naming_the_key(
    tmp_path: Path, name: str, text: str, says: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    cfg = ClientsConfig(enabled=True, trace=str(path))

    with pytest.raises(ConfigError, match=r"clients\.trace") as err:
        ClientClock.from_config(cfg, seed=0, num_examples={0: 1, 1: 1}, epochs=1)
    assert says in str(err.value)


def test_a_missing_trace_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = ClientsConfig(enabled=True, trace=str(tmp_path / "absent.csv"))
    with pytest.raises(ConfigError, match=r"clients\.trace .* does not exist"):
        ClientClock.from_config(cfg, seed=0, num_examples={0: 1}, epochs=1)


def test_traced_availability_answers_who_is_online_when(tmp_path: Path) -> None:
    # Prepare: client 0 online [0, 10) and [20, 30); client 1 online from 15 on
    trace = tmp_path / "trace.json"
    trace.write_text(
        json.dumps(
            [
                {"client_id": 0, "online": [[0, 10], [20, 30]]},
                {"client_id": 1, "online": [[15, 1e9]]},
            ]
        )
    )
    cfg = ClientsConfig(enabled=True, trace=str(trace))
    clock = ClientClock.from_config(cfg, seed=0, num_examples={0: 1, 1: 1}, epochs=1)

    # Execute / Assert
    assert clock.online_until(0, 5.0) == 10.0 and clock.online_until(0, 12.0) is None
    assert clock.available([0, 1], 12.0) == [] and clock.available([0, 1], 25.0) == [0, 1]
    assert clock.next_online([0, 1], 12.0) == 15.0
    assert clock.next_online([0], 31.0) == math.inf  # the trace ends: never again
    assert clock.wait_for([0, 1], 2, 0.0) == 20.0  # both online at once from 20
    clock.now = 11.0
    population = ClockedPopulation({0: 1, 1: 1}, clock=clock)
    assert population.eligible == []
    clock.wait_for_online(1)
    assert clock.now == 15.0 and population.eligible == [1]


def test_drawn_availability_is_seeded_per_client_and_stationary() -> None:
    # Prepare: online for 200 s on average, offline for 100 s: online 2/3 of the time
    first, second = Availability(7, 200.0, 100.0), Availability(7, 200.0, 100.0)

    # Execute: questions in different orders
    late_first = [first.online_until(3, 5000.0), first.online_until(3, 10.0)]
    early_first = [second.online_until(3, 10.0), second.online_until(3, 5000.0)]
    online = [first.online_until(c, 0.0) is not None for c in range(3000)]

    # Assert
    assert late_first == early_first[::-1]
    assert np.mean(online) == pytest.approx(2 / 3, abs=0.03)


def test_local_work_is_the_whole_epochs_that_fit_in_local_seconds() -> None:
    # Prepare: 10 examples each; speeds 10/s (1 s an epoch), 5/s (2 s), 2.5/s (4 s)
    clock = _clock(speeds=[10.0, 5.0, 2.5], local_seconds=2.0)

    # Execute / Assert: 2 s fit 2, 1 and 0 epochs (at least 1); never more than asked
    assert [clock.local_epochs(c, 3) for c in range(3)] == [2, 1, 1]
    assert clock.local_epochs(0, 1) == 1


SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))


class FixedClient:
    """Uploads a fixed delta whatever it receives; remembers the epochs it was asked for."""

    def __init__(self, delta: list[float], n: int = 10) -> None:
        self.delta, self.n = np.array(delta, np.float32), n
        self.epochs: list[int] = []

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        self.epochs.append(int(config["epochs"]))
        return FitResult(update={"w": self.delta}, num_examples=self.n)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=self.n)


def _clock(
    speeds: list[float], deadline: float | None = None, local_seconds: float | None = None
) -> ClientClock:
    # 8 B/s: the 8-byte model (two float32) takes 1 s down and the 8-byte update 1 s up
    return ClientClock(
        profiles={c: ClientProfile(s, 8.0) for c, s in enumerate(speeds)},
        num_examples=dict.fromkeys(range(len(speeds)), 10),
        availability=Availability(0, None, 1.0),
        epochs=1,
        local_seconds=local_seconds,
        deadline=deadline,
    )


class _Arrivals:
    def __init__(self) -> None:
        self.order: list[int] = []

    def on_round_start(self, round_num: int, num_clients: int) -> None: ...

    def on_result(self, result: Result) -> None:
        self.order.append(result.task.client_id)

    def on_round_end(self, record: dict[str, Any]) -> None: ...


def _sync_round(
    clock: ClientClock,
    clients: dict[int, FixedClient],
    rounds: int = 1,
    strategy: Strategy | None = None,
) -> tuple[Coordinator, list[int]]:
    arrivals = _Arrivals()
    coord = Coordinator(
        strategy=strategy or FedAvg(client_config={"epochs": 3}),
        engine=ClockedEngine(SequentialEngine(clients.__getitem__), clock),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=ClockedPopulation({c: 10 for c in clients}, clock=clock),
        listeners=[arrivals],
    )
    coord.run(rounds)
    return coord, arrivals.order


def test_a_synchronous_round_waits_for_its_slowest_client() -> None:
    # Prepare: compute 30 / speed s (3 epochs of 10) + 2 s of transfer: 3.5, 2.5 and 8 s
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 1]), 2: FixedClient([2, 2])}

    # Execute
    coord, order = _sync_round(_clock([20.0, 60.0, 5.0]), clients, rounds=2)

    # Assert: results arrive in the order the clients finish; the round lasts 8 s
    assert order == [1, 0, 2, 1, 0, 2]
    first, second = coord.history
    assert first["sim_seconds"] == pytest.approx(8.0) and first["stragglers"] == 0
    assert second["sim_time"] == pytest.approx(16.0)
    np.testing.assert_allclose(coord.params, 2 * np.array([1.0, 1.0]))  # mean delta [1, 1]


def test_a_deadline_leaves_stragglers_out_and_the_round_lasts_until_it() -> None:
    # Prepare: as above with a 6 s deadline: client 2 (8 s) is a straggler
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 1]), 2: FixedClient([2, 2])}

    # Execute
    coord, order = _sync_round(_clock([20.0, 60.0, 5.0], deadline=6.0), clients)

    # Assert: client 2 never ran; the mean of [1, 0] and [0, 1]; 6 s
    (record,) = coord.history
    assert order == [1, 0] and clients[2].epochs == []
    assert record["stragglers"] == 1 and record["returned"] == 2
    assert record["sim_seconds"] == pytest.approx(6.0)
    np.testing.assert_allclose(coord.params, [0.5, 0.5])


def test_slow_clients_train_fewer_epochs_with_local_seconds() -> None:
    # Prepare: 2 s of local work at 10, 5 and 2.5 examples/s (1, 2 and 4 s an epoch)
    clients = {c: FixedClient([1, 1]) for c in range(3)}

    # Execute
    coord, _ = _sync_round(_clock([10.0, 5.0, 2.5], local_seconds=2.0), clients)

    # Assert: 2, 1 and 1 epochs of the 3 asked; the slowest takes 2 + 4 s
    assert [clients[c].epochs for c in range(3)] == [[2], [1], [1]]
    assert coord.history[0]["sim_seconds"] == pytest.approx(6.0)


def test_a_full_gradient_is_one_pass_over_the_examples_whatever_the_epochs() -> None:
    # Prepare: FedSGD asks for gradients; the config still names 3 epochs
    clients = {0: FixedClient([1, 0])}

    # Execute
    coord, _ = _sync_round(_clock([5.0]), clients, strategy=FedSGD(client_config={"epochs": 3}))

    # Assert: 10 examples / 5 per s + 2 s of transfer
    assert coord.history[0]["sim_seconds"] == pytest.approx(4.0)


def test_a_client_that_goes_offline_mid_task_drops_out() -> None:
    # Prepare: client 1 leaves at 2 s, before its 2.5 s task is done
    clock = _clock([20.0, 60.0])
    clock.availability = Availability(0, None, 1.0, {1: [(0.0, 2.0), (100.0, 200.0)]})
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 1])}

    # Execute
    coord, order = _sync_round(clock, clients)

    # Assert: only client 0 (3.5 s) counts
    (record,) = coord.history
    assert order == [0] and record["dropouts"] == 1
    assert record["sim_time"] == pytest.approx(3.5)
    np.testing.assert_allclose(coord.params, [1.0, 0.0])


def _simulate(engine: str, clients: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = validate_config(
        {
            "rounds": 3,
            "partition": {"num_clients": 12},
            "model": {"hidden": [16]},
            "client": {"epochs": 2, "lr": 0.05},
            "strategy": {"fraction_fit": 0.5},
            "engine": {"name": engine},
            "clients": clients,
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from more on a busy machine
    try:
        return Simulation(cfg).coordinator().run(cfg.rounds)
    finally:
        torch.set_num_threads(threads)


def test_a_clocked_synchronous_simulation_is_the_same_on_every_engine() -> None:
    # Prepare: heavy-tailed speeds, a deadline, variable work and clients coming and going
    clients = {
        "enabled": True,
        "speed_sigma": 1.0,
        "deadline_s": 1.0,
        "local_seconds": 0.5,
        "mean_online_s": 3.0,
        "mean_offline_s": 1.0,
    }

    # Execute
    sequential = _simulate("sequential", clients)
    vectorized = _simulate("vectorized", clients)
    off = _simulate("sequential", {"enabled": False})

    # Assert: the same schedule and model; with the clock off, no simulated time
    timing = ("sim_time", "selected", "returned", "stragglers", "dropouts")
    for a, b in zip(sequential, vectorized, strict=True):
        assert {k: a[k] for k in timing} == {k: b[k] for k in timing}
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert sum(r["stragglers"] for r in sequential) > 0
    assert sum(r["dropouts"] for r in sequential) > 0
    assert not any("sim_time" in r for r in off)


def test_central_dp_with_clients_coming_and_going_is_refused() -> None:
    cfg = validate_config(
        {
            "partition": {"num_clients": 4},
            "strategy": {"fraction_fit": 0.5, "sampling": "poisson"},
            "privacy": {"mechanism": "central"},
            "clients": {"enabled": True, "mean_online_s": 60.0},
        }
    )
    with pytest.raises(ConfigError, match=r"clients\.mean_online_s"):
        Simulation(cfg).coordinator()
