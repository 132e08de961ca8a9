"""q-FFL (q-FedAvg): the client's reported loss and the server step, hand-computed."""

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
from fedloom.strategies import QFFL
from tests.strategies.test_fedprox import CONFIG, one_weight_client


def test_the_client_reports_its_training_loss_at_the_global_model() -> None:
    # Prepare: the loss is w^2 on the one example; the global model is w = 2
    client = one_weight_client()

    # Execute
    fit = client.fit(
        {"weight": np.full((1, 1), 2.0, np.float32)}, {**CONFIG, "local": {"name": "qffl"}}
    )

    # Assert: F(2) = 4 before training; the upload is the plain delta 2 -> 1.6 -> 1.28
    assert fit.metrics["qffl_loss"] == pytest.approx(4.0)
    np.testing.assert_allclose(np.asarray(fit.update), [-0.72], rtol=1e-5)


SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))
THETA = np.array([1.0, 2.0], np.float32)


class LossClient:
    """Uploads a fixed delta and reports a fixed ``F_k(w)``."""

    def __init__(self, delta: list[float], loss: float | None) -> None:
        self.delta, self.loss = np.array(delta, np.float32), loss

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        assert config["local"] == {"name": "qffl"}
        metrics = {} if self.loss is None else {"qffl_loss": self.loss}
        return FitResult(update={"w": self.delta}, num_examples=10, metrics=metrics)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=10)


def _round(q: float, clients: dict[int, LossClient]) -> np.ndarray:
    coord = Coordinator(
        strategy=QFFL(q=q, client_config={"lr": 0.1}),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=THETA.copy(),
        population=Population({cid: 10 for cid in clients}),
    )
    assert coord.run_round(1)["status"] == "ok"
    return coord.params


def _clients() -> dict[int, LossClient]:
    return {0: LossClient([-0.1, 0.0], 2.0), 1: LossClient([0.0, -0.2], 0.5)}


def test_the_server_step_weights_clients_by_their_loss() -> None:
    # L = 1 / 0.1 = 10. Client 0: dw = [1, 0], Delta = 2 [1, 0], h = 1 * 2^0 * 1 + 10 * 2 = 21.
    # Client 1: dw = [0, 2], Delta = 0.5 [0, 2] = [0, 1], h = 1 * 0.5^0 * 4 + 10 * 0.5 = 9.
    # w' = [1, 2] - [2, 1] / 30
    np.testing.assert_allclose(_round(1.0, _clients()), [1 - 2 / 30, 2 - 1 / 30], rtol=1e-6)


def test_q_zero_is_the_unweighted_mean_of_local_models() -> None:
    # h = L for each client: w' = w - (10 [0.1, 0] + 10 [0, 0.2]) / 20 = w + mean(delta)
    np.testing.assert_allclose(_round(0.0, _clients()), [0.95, 1.9], rtol=1e-6)


def test_a_result_without_its_loss_is_left_out() -> None:
    clients = {0: LossClient([-0.1, 0.0], 2.0), 1: LossClient([0.0, -0.2], None)}
    # client 0 alone: w' = w - [2, 0] / 21
    np.testing.assert_allclose(_round(1.0, clients), [1 - 2 / 21, 2.0], rtol=1e-6)


def test_a_negative_q_and_a_robust_aggregator_are_config_errors() -> None:
    from fedloom.aggregators import CoordinateMedian

    with pytest.raises(ConfigError, match=r"strategy\.q must be a finite number >= 0, got -1"):
        QFFL(q=-1)
    with pytest.raises(ConfigError, match=r"use strategy\.aggregator=mean with qffl"):
        QFFL(aggregator_factory=CoordinateMedian)
