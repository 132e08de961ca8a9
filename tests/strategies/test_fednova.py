"""FedNova: the client's normalised update and the server's aggregation, hand-computed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from fedloom.client.base import EvalResult, FitResult
from fedloom.core.params import Params, ParamSpec
from fedloom.engines import SequentialEngine
from fedloom.errors import ConfigError
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies import FedNova
from tests.strategies.test_fedprox import CONFIG, one_weight_client


def test_the_client_uploads_its_delta_over_its_work_and_reports_it() -> None:
    # Prepare: the loss is w^2 (gradient 2w), w = 1, lr 0.1, tau = 2 steps
    client = one_weight_client()
    local = {"local": {"name": "fednova"}}

    # Execute
    plain = client.fit({"weight": np.ones((1, 1), np.float32)}, {**CONFIG, **local})
    heavy = client.fit(
        {"weight": np.ones((1, 1), np.float32)}, {**CONFIG, **local, "momentum": 0.5}
    )

    # Assert: plain SGD: 1 -> 0.8 -> 0.64, delta -0.36, ||a||_1 = tau = 2
    np.testing.assert_allclose(np.asarray(plain.update), [-0.18], rtol=1e-6)
    assert plain.metrics["local_steps"] == 2.0 and plain.metrics["fednova_norm"] == 2.0
    # momentum 0.5: buf 2 -> w 0.8; buf 0.5 * 2 + 1.6 = 2.6 -> w 0.54; delta -0.46,
    # a = [1 + 0.5, 1], ||a||_1 = (2 - 0.5 (1 - 0.25) / 0.5) / 0.5 = 2.5
    np.testing.assert_allclose(np.asarray(heavy.update), [-0.46 / 2.5], rtol=1e-5)
    assert heavy.metrics["fednova_norm"] == pytest.approx(2.5)


SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))
THETA = np.array([1.0, 2.0], np.float32)


class NormalisedClient:
    """Uploads a fixed normalised update ``d_i`` after ``tau`` plain SGD steps."""

    def __init__(self, d: list[float], n: int, tau: float | None) -> None:
        self.d, self.n, self.tau = np.array(d, np.float32), n, tau

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        assert config["local"] == {"name": "fednova"}
        work = {} if self.tau is None else {"local_steps": self.tau, "fednova_norm": self.tau}
        return FitResult(update={"w": self.d}, num_examples=self.n, metrics=work)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=self.n)


def _round(clients: dict[int, NormalisedClient]) -> tuple[np.ndarray, dict[str, Any]]:
    coord = Coordinator(
        strategy=FedNova(),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=THETA.copy(),
        population=Population({cid: c.n for cid, c in clients.items()}),
    )
    record = coord.run_round(1)
    return coord.params, record


def test_the_server_rescales_the_mean_normalised_update_by_tau_eff() -> None:
    # Prepare: client 0 (n=1) ran tau=2 steps, delta [2, 0]; client 1 (n=3) tau=4, delta [0, 4]
    clients = {0: NormalisedClient([1, 0], 1, 2.0), 1: NormalisedClient([0, 1], 3, 4.0)}

    # Execute
    params, record = _round(clients)

    # Assert: p = (1/4, 3/4); mean d = [0.25, 0.75]; tau_eff = 2/4 + 3 * 4/4 = 3.5;
    # x' = [1, 2] + 3.5 * [0.25, 0.75] (FedAvg's weighted mean of deltas gives [1.5, 5])
    np.testing.assert_allclose(params, [1.875, 4.625], rtol=1e-6)
    assert record["tau_eff"] == pytest.approx(3.5)


def test_equal_local_work_is_fedavg() -> None:
    clients = {0: NormalisedClient([1, 0], 1, 2.0), 1: NormalisedClient([0, 2], 3, 2.0)}

    params, _ = _round(clients)

    # deltas [2, 0] and [0, 4]: (1 * [2, 0] + 3 * [0, 4]) / 4 = [0.5, 3]
    np.testing.assert_allclose(params, [1.5, 5.0], rtol=1e-6)


def test_a_result_without_its_work_is_left_out() -> None:
    clients = {0: NormalisedClient([1, 0], 1, 2.0), 1: NormalisedClient([0, 1], 3, None)}

    params, record = _round(clients)

    # only client 0: tau_eff = 2, x' = [1, 2] + 2 * [1, 0]
    np.testing.assert_allclose(params, [3.0, 2.0], rtol=1e-6)
    assert record["status"] == "ok"


def test_local_adam_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"client\.optimizer='adam' has no such normalisation"):
        FedNova(client_config={"optimizer": "adam"})
