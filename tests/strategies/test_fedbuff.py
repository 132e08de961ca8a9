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

from fedloom.client.base import EvalResult, FitResult
from fedloom.config import validate_config
from fedloom.core.params import Params, ParamSpec
from fedloom.engines import SequentialEngine
from fedloom.errors import ConfigError
from fedloom.server.coordinator import Coordinator, Population
from fedloom.server.user_code import build_strategy
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


class FixedClock:
    """Every client always online; client c's task takes ``seconds[c]``, whatever it sends."""

    epochs = 1

    def __init__(self, seconds: dict[int, float], leaves: dict[int, float] | None = None) -> None:
        self.seconds, self.leaves = seconds, leaves or {}

    def available(self, clients: Sequence[int], at: float) -> list[int]:
        return sorted(c for c in clients if at < self.leaves.get(c, math.inf))

    def next_online(self, clients: Sequence[int], at: float) -> float:
        return at if self.available(clients, at) else math.inf

    def online_until(self, client: int, at: float) -> float | None:
        return self.leaves.get(client, math.inf)

    def local_epochs(self, client: int, epochs: int) -> int:
        return epochs

    def task_seconds(self, client: int, bytes_down: int, bytes_up: int, epochs: int) -> float:
        return self.seconds[client]


def _fedbuff(clients: dict[int, FixedClient], clock: FixedClock, rounds: int) -> Coordinator:
    coord = Coordinator(
        strategy=FedBuff(buffer_size=2, concurrency=3, clock=clock),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population(dict.fromkeys(clients, 1)),
    )
    coord.run(rounds)
    return coord


def test_the_server_steps_as_soon_as_k_updates_arrive_weighting_stale_ones_down() -> None:
    # Prepare: K = 2, C = 3; client tasks take 1, 4 and 2.5 s
    clients = {0: FixedClient([1, 0]), 1: FixedClient([0, 2]), 2: FixedClient([2, 2])}
    clock = FixedClock({0: 1.0, 1: 4.0, 2: 2.5})

    # Execute
    coord = _fedbuff(clients, clock, rounds=3)

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
    clock = FixedClock({0: 1.0, 1: 4.0, 2: 2.5}, leaves={1: 2.0})

    # Execute
    coord = _fedbuff(clients, clock, rounds=1)

    # Assert: 0 at 1, 1 gone at 2, 2 at 2.5: the same step as without it, 1 never trained
    (record,) = coord.history
    assert record["dropouts"] == 1 and record["selected"] == 2 and clients[1].seen == []
    np.testing.assert_allclose(coord.params, [1.5, 1.0])


def test_fedbuff_without_a_clock_or_with_synchronous_settings_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"clients\.enabled=true"):
        validate_config({"strategy": {"name": "fedbuff"}})
    on = {"clients": {"enabled": True}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"aggregator": "median"}, "strategy.aggregator"),
        ({"fraction_fit": 0.5}, "strategy.fraction_fit"),
    ]
    for strategy, key in cases:
        cfg = validate_config({**on, "strategy": {"name": "fedbuff", **strategy}})
        with pytest.raises(ConfigError, match=re.escape(key)):
            make_strategy(cfg)
    with pytest.raises(ConfigError, match=r"deployment .* not implemented"):
        FedBuff().init_state(np.zeros(2, np.float32))
    fedbuff = validate_config({**on, "strategy": {"name": "fedbuff"}})
    with pytest.raises(ConfigError, match=r"deployment .* not implemented"):
        build_strategy(fedbuff, None)  # what fedloom server builds its strategy with


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
