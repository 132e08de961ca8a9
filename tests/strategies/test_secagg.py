"""Secure aggregation through the real round loop and engines: the same model as plaintext
FedAvg within the quantisation error, clients dropping out at each stage, protocol-breaking
messages refused, composition with differential privacy, and the config checks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import pytest

from fedloom.config import load_config
from fedloom.core.task import FIT, Blobs, Result, Task
from fedloom.engines.base import Engine
from fedloom.errors import ConfigError
from fedloom.secagg import ADVERTISE, SHARE, UNMASK
from fedloom.server.coordinator import Coordinator
from fedloom.simulation import Simulation
from tests.engines.conformance import ENGINE_FACTORIES, engine_params

BASE = ["partition.num_clients=6", "seed=3", "rounds=2", "client.epochs=1", "client.batch_size=100"]
SECURE = ["secure_aggregation.enabled=true", "secure_aggregation.mode=secagg"]
# clip 8 over 2^22 levels: at most 1.9e-6 per client and coordinate; the mean of 6 is as precise
QUANTUM = 8.0 / (2**22 - 1)


class Dropping:
    """An engine that loses the results of ``clients`` at the stage of kind ``kind``, as if they
    had dropped out (they ran, so their state moved on, as a crashed client's would not matter)."""

    name = "dropping"

    def __init__(self, inner: Engine, kind: str, clients: set[int], garble: bool = False) -> None:
        self.inner, self.kind, self.clients, self.garble = inner, kind, clients, garble

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        for result in self.inner.run(tasks, blobs):
            hit = result.task.kind == self.kind and result.task.client_id in self.clients
            if hit and self.garble:  # a low-order public key, or a masked input cut short
                payload = result.payload or b""
                garbled = bytes(32) + payload[32:] if self.kind == ADVERTISE else payload[:-4]
                yield replace(result, payload=garbled)
            elif hit:
                yield Result(result.task, error="ConnectionError: the client dropped out")
            else:
                yield result

    def close(self) -> None:
        self.inner.close()


def _coordinator(
    overrides: list[str], engine: str = "sequential"
) -> tuple[Simulation, Coordinator]:
    sim = Simulation(load_config(None, [*BASE, *overrides]))
    coord = sim.coordinator()
    coord.engine.close()
    coord.engine = ENGINE_FACTORIES[engine](sim.client)
    return sim, coord


@pytest.mark.parametrize("engine", engine_params())
def test_secure_fedavg_gives_plaintext_fedavgs_model_within_the_quantisation_error(
    engine: str,
) -> None:
    _, plain = _coordinator([], engine)
    _, secure = _coordinator(SECURE, engine)
    # one engine for both runs (the same clients): a second Ray engine would wait for CPUs that
    # the first one's actors hold
    secure.engine.close()
    secure.engine = plain.engine
    for r in (1, 2):
        plain.run_round(r, evaluate=False)
        record = secure.run_round(r, evaluate=False)
        assert record["status"] == "ok"
        assert np.abs(secure.params - plain.params).max() <= 6 * QUANTUM
        # 4 exchanges of 6 clients each, none lost
        assert (record["selected"], record["returned"]) == (24, 24)
        assert record["secagg_threshold"] == 3 and record["secagg_neighbours"] == 5
        assert record["bytes_up"] > 6 * 4 * secure.spec.size  # masked inputs and the protocol
        plain.params = secure.params.copy()  # the next round starts from the same model


@pytest.mark.parametrize("kind", [SHARE, FIT, UNMASK], ids=["share", "masked", "unmask"])
def test_dropouts_at_each_stage_leave_a_correct_sum(kind: str) -> None:
    _, secure = _coordinator(SECURE)
    secure.engine = Dropping(secure.engine, kind, {0, 4})
    record = secure.run_round(1, evaluate=False)
    stage = {SHARE: "share", FIT: "masked", UNMASK: "unmask"}[kind]
    assert record["status"] == "ok" and record[f"secagg_dropped_{stage}"] == 2
    assert record["failed"] == 2
    # the model is plaintext FedAvg over the clients whose inputs are in the sum
    _, plain = _coordinator([])
    alive = [1, 2, 3, 5] if kind in (SHARE, FIT) else list(range(6))
    plain.engine = _Only(plain.engine, set(alive))
    plain.run_round(1, evaluate=False)
    assert np.abs(secure.params - plain.params).max() <= 6 * QUANTUM


class _Only:
    name = "only"

    def __init__(self, inner: Engine, clients: set[int]) -> None:
        self.inner, self.clients = inner, clients

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        return self.inner.run([t for t in tasks if t.client_id in self.clients], blobs)

    def close(self) -> None:
        self.inner.close()


def test_too_many_dropouts_fail_the_round_cleanly_and_the_next_one_runs() -> None:
    _, secure = _coordinator(SECURE)
    before = secure.params.copy()
    secure.engine = Dropping(secure.engine, FIT, {0, 1, 2, 3})  # 2 inputs, t = 3
    record = secure.run_round(1, evaluate=False)
    assert record["status"] == "failed" and record["secagg_dropped_masked"] == 4
    np.testing.assert_array_equal(secure.params, before)
    assert isinstance(secure.engine, Dropping)
    secure.engine = secure.engine.inner
    assert secure.run_round(2, evaluate=False)["status"] == "ok"


@pytest.mark.parametrize("kind", [ADVERTISE, FIT], ids=["forged-keys", "short-masked-input"])
def test_messages_that_break_the_protocol_are_rejected_as_dropouts(kind: str) -> None:
    _, secure = _coordinator(SECURE)
    secure.engine = Dropping(secure.engine, kind, {2}, garble=True)
    record = secure.run_round(1, evaluate=False)
    assert record["status"] == "ok" and record["rejected"] == 1


def test_secure_aggregation_composes_with_client_side_dp() -> None:
    dp = ["privacy.mechanism=client", "privacy.clip_norm=0.5", "privacy.noise_multiplier=0"]
    _, plain = _coordinator(dp)
    _, secure = _coordinator([*dp, *SECURE])
    plain.run_round(1, evaluate=False)
    record = secure.run_round(1, evaluate=False)
    assert np.abs(secure.params - plain.params).max() <= 6 * QUANTUM
    _, noisy = _coordinator([*SECURE, "privacy.mechanism=client", "privacy.noise_multiplier=1"])
    record = noisy.run_round(1, evaluate=False)
    assert record["status"] == "ok" and 0 < record["epsilon"] < float("inf")
    # each client added N(0, (z C)^2 / 6): its transforms say so
    assert noisy.strategy.fit_config(noisy._context(1, np.random.default_rng(0)))["transforms"][
        1
    ] == {"name": "gaussian_noise", "std": pytest.approx(1.0 / 6**0.5)}


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["secure_aggregation.clip_range=0"], "clip_range must be > 0"),
        (["strategy.name=fedbuff"], "its own staleness"),
        (["strategy.aggregator=median"], "sees only their sum"),
        (["privacy.mechanism=central"], "privacy.mechanism=client"),
        (["transport.upload=[int8]"], "its own encoding"),
        (["secure_aggregation.quantization_bits=32"], "below modulus_bits"),
        (["partition.num_clients=2000", "secure_aggregation.quantization_bits=30"], "overflows"),
    ],
)
def test_config_errors_name_the_key_and_the_way_out(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["secure_aggregation.enabled=true", *overrides])
