"""FedAvg and FedSGD against hand-computed numbers, through the real round loop."""

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedloom.client.base import EvalResult, FitResult
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import Blob, Upload
from fedloom.engines import SequentialEngine
from fedloom.optim import ServerSGD
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies import FedAvg, FedSGD, RoundContext

SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))
THETA = np.array([1.0, 2.0], np.float32)


class FixedClient:
    """Returns a fixed local model (train mode) or a fixed gradient (gradient mode)."""

    def __init__(self, local: list[float], grad: list[float], n: int) -> None:
        self.local, self.grad, self.n = np.array(local, np.float32), np.array(grad, np.float32), n
        self.seen: list[Mapping[str, Any]] = []

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        self.seen.append(config)
        if config["mode"] == "gradient":
            return FitResult(update={"w": self.grad}, num_examples=self.n)
        return FitResult(update=self.local - params["w"], num_examples=self.n)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=self.n)


def _one_round(strategy: Any) -> np.ndarray:
    clients = {0: FixedClient([3, 2], [1, 1], 1), 1: FixedClient([1, 6], [3, -1], 3)}
    coord = Coordinator(
        strategy=strategy,
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=THETA.copy(),
        population=Population({0: 1, 1: 3}),
    )
    record = coord.run_round(1)
    assert record["returned"] == 2 and record["status"] == "ok"
    assert record["bytes_down"] == 2 * 8 and record["bytes_up"] == 2 * 8
    return coord.params


def test_fedavg_is_the_example_weighted_mean_of_client_models() -> None:
    # (1*[3,2] + 3*[1,6]) / 4 = [1.5, 5]
    np.testing.assert_allclose(_one_round(FedAvg()), [1.5, 5.0])


def test_fedavg_server_lr_scales_the_mean_delta() -> None:
    # mean delta [0.5, 3]; theta + 0.5 * delta = [1.25, 3.5]
    np.testing.assert_allclose(_one_round(FedAvg(server_optimizer=ServerSGD(lr=0.5))), [1.25, 3.5])


def test_fedsgd_weighted_mean_of_gradients() -> None:
    # mean g = (1*[1,1] + 3*[3,-1]) / 4 = [2.5, -0.5]; theta - 0.1 g = [0.75, 2.05]
    out = _one_round(FedSGD(server_optimizer=ServerSGD(lr=0.1)))
    np.testing.assert_allclose(out, [0.75, 2.05], rtol=1e-6)


def test_fedsgd_plain_sum_of_the_seed_formula() -> None:
    # sum g = [1+3, 1-1] = [4, 0]; theta - 0.1 * sum = [0.6, 2.0]
    out = _one_round(FedSGD(aggregation="sum", server_optimizer=ServerSGD(lr=0.1)))
    np.testing.assert_allclose(out, [0.6, 2.0], rtol=1e-6)


def _context(round_num: int, eligible: list[int], seed: int) -> RoundContext:
    model = Blob.encode(SPEC, Float32Codec(), THETA)
    return RoundContext(
        round_num,
        eligible,
        np.random.default_rng(0),
        seed,
        SPEC,
        Float32Codec(),
        THETA,
        model,
        {},
        len(eligible),
    )


def test_fedavg_sends_local_training_config_and_fedsgd_asks_for_gradients() -> None:
    strategy = FedAvg(client_config={"epochs": 3})
    tasks = strategy.configure_fit(_context(4, [0, 1], seed=9))
    assert [t.client_id for t in tasks] == [0, 1]
    assert tasks[0].config == {"epochs": 3, "mode": "train", "round": 4, "seed": 9}
    assert tasks[0].upload == Upload("float32", 2)
    assert FedSGD().configure_fit(_context(1, [0], 0))[0].config["mode"] == "gradient"
