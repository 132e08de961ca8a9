"""q-FFL (q-FedAvg): the client's reported loss and the server step, hand-computed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from fedloom.client.base import EvalResult, FitResult
from fedloom.config import load_config
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import Blob
from fedloom.engines import SequentialEngine
from fedloom.errors import ConfigError
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies import QFFL, RoundContext
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

    def __init__(self, delta: list[float], loss: float | None, num_examples: int = 10) -> None:
        self.delta, self.loss = np.array(delta, np.float32), loss
        self.num_examples = num_examples

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        assert config["local"] == {"name": "qffl"}
        metrics = {} if self.loss is None else {"qffl_loss": self.loss}
        return FitResult(update={"w": self.delta}, num_examples=self.num_examples, metrics=metrics)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=self.num_examples)


def _round(q: float, clients: dict[int, LossClient], **settings: Any) -> np.ndarray:
    coord = Coordinator(
        strategy=QFFL(q=q, client_config={"lr": 0.1}, **settings),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=THETA.copy(),
        population=Population({cid: c.num_examples for cid, c in clients.items()}),
    )
    assert coord.run_round(1)["status"] == "ok"
    return coord.params


def _clients(sizes: tuple[int, int] = (10, 10)) -> dict[int, LossClient]:
    return {0: LossClient([-0.1, 0.0], 2.0, sizes[0]), 1: LossClient([0.0, -0.2], 0.5, sizes[1])}


def test_the_server_step_weights_clients_by_their_loss() -> None:
    # L = 1 / 0.1 = 10. Client 0: dw = [1, 0], Delta = 2 [1, 0], h = 1 * 2^0 * 1 + 10 * 2 = 21.
    # Client 1: dw = [0, 2], Delta = 0.5 [0, 2] = [0, 1], h = 1 * 0.5^0 * 4 + 10 * 0.5 = 9.
    # w' = [1, 2] - [2, 1] / 30
    np.testing.assert_allclose(_round(1.0, _clients()), [1 - 2 / 30, 2 - 1 / 30], rtol=1e-6)


def test_q_zero_is_the_unweighted_mean_of_local_models() -> None:
    # h = L for each client: w' = w - (10 [0.1, 0] + 10 [0, 0.2]) / 20 = w + mean(delta)
    np.testing.assert_allclose(_round(0.0, _clients()), [0.95, 1.9], rtol=1e-6)


def test_under_uniform_selection_clients_count_by_their_number_of_examples() -> None:
    # p_k = n_k / n: 30 and 10 examples. Delta and h as above:
    # w' = w - (30 [2, 0] + 10 [0, 1]) / (30 * 21 + 10 * 9) = w - [60, 10] / 720
    np.testing.assert_allclose(
        _round(1.0, _clients((30, 10))), [1 - 60 / 720, 2 - 10 / 720], rtol=1e-6
    )


def test_q_zero_under_uniform_selection_is_fedavg() -> None:
    # h = L: w' = w - (30 * 10 [0.1, 0] + 10 * 10 [0, 0.2]) / (40 * 10) = w - [0.075, 0.05],
    # FedAvg's example-weighted mean of the deltas, (30 [-0.1, 0] + 10 [0, -0.2]) / 40
    np.testing.assert_allclose(_round(0.0, _clients((30, 10))), [0.925, 1.95], rtol=1e-6)


def test_clients_drawn_by_size_are_summed_unweighted() -> None:
    # sampling=size (here both clients: fraction 1): the paper's sum, w' = w - [2, 1] / 30
    np.testing.assert_allclose(
        _round(1.0, _clients((30, 10)), sampling="size"), [1 - 2 / 30, 2 - 1 / 30], rtol=1e-6
    )


def test_the_lipschitz_estimate_replaces_one_over_lr() -> None:
    # L = 2. Client 0: dw = [0.2, 0], Delta = 2 [0.2, 0], h = 0.04 + 2 * 2 = 4.04.
    # Client 1: dw = [0, 0.4], Delta = 0.5 [0, 0.4], h = 0.16 + 2 * 0.5 = 1.16.
    # w' = w - [0.4, 0.2] / 5.2
    np.testing.assert_allclose(
        _round(1.0, _clients(), lipschitz_estimate=2.0),
        [1 - 0.4 / 5.2, 2 - 0.2 / 5.2],
        rtol=1e-6,
    )
    assert QFFL(client_config={"lr": 0.05}).lipschitz == pytest.approx(20.0)
    assert QFFL(client_config={"lr": 0.05}, lipschitz_estimate=3.0).lipschitz == 3.0


def test_size_sampling_draws_the_clients_with_the_data() -> None:
    # two of three clients a round, by size: client 1 holds all but two of 10^9 + 2 examples
    strategy = QFFL(fraction_fit=0.5, sampling="size")
    rng = np.random.default_rng(0)
    codec = Float32Codec()
    for r in range(1, 6):
        ctx = RoundContext(
            round=r,
            eligible=[0, 1, 2],
            rng=rng,
            seed=0,
            spec=SPEC,
            codec=codec,
            params=THETA,
            model=Blob.encode(SPEC, codec, THETA),
            state={},
            num_clients=3,
            num_examples={0: 1, 1: 10**9, 2: 1},
        )
        chosen = [t.client_id for t in strategy.configure_fit(ctx)]
        assert len(chosen) == 2 and 1 in chosen
        assert all(t.config["local"] == {"name": "qffl"} for t in strategy.configure_fit(ctx))


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
    with pytest.raises(ConfigError, match=r"strategy\.qffl_lipschitz must be a finite number > 0"):
        QFFL(lipschitz_estimate=0.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy.name=qffl", "strategy.qffl_lipschitz=-1"], "strategy.qffl_lipschitz: got -1"),
        (["strategy.qffl_lipschitz=5"], "strategy.qffl_lipschitz applies to qffl only"),
        (["strategy.sampling=size"], "strategy.sampling=size is implemented for qffl only"),
        (
            ["strategy.name=qffl", "strategy.sampling=sized"],
            "allowed: 'fixed', 'poisson' or 'size'",
        ),
    ],
)
def test_bad_qffl_settings_are_config_errors_naming_the_key(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)
