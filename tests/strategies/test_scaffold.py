"""SCAFFOLD (option II): the client's corrected steps and control update, and the server's
update of the model and of the control variate, against hand-computed numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from fedloom.client.base import ClientContext, EvalResult, FitResult
from fedloom.core.params import Params, ParamSpec
from fedloom.engines import SequentialEngine
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies import Scaffold
from tests.strategies.test_fedprox import CONFIG, one_weight_client


def test_the_client_corrects_every_step_and_updates_its_control_variate() -> None:
    # Prepare: c = 0.5 (server), c_i = 0.2 (this client's state), lr 0.1, K = 2 steps
    client = one_weight_client()
    context = ClientContext(
        blobs={"control": np.array([0.5], np.float32)},
        state={"scaffold_control/weight": np.array([[0.2]], np.float32)},
    )

    # Execute
    fit = client.fit(
        {"weight": np.ones((1, 1), np.float32)}, {**CONFIG, "local": {"name": "scaffold"}}, context
    )

    # Assert: step 1: w = 1 - 0.1 * (2 - 0.2 + 0.5) = 0.77; step 2: w = 0.77 - 0.1 * 1.84 = 0.586
    # delta_y = -0.414; c_i+ = c_i - c + (x - y) / (K lr) = 0.2 - 0.5 + 0.414 / 0.2 = 1.77
    np.testing.assert_allclose(np.asarray(fit.update), np.array([-0.414, 1.77 - 0.2]), rtol=1e-5)
    np.testing.assert_allclose(context.state["scaffold_control/weight"], [[1.77]], rtol=1e-5)


SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))


class ControlClient:
    """Uploads fixed (delta_y, delta_c) and records the server control variate it was sent."""

    def __init__(self, delta_y: list[float], delta_c: list[float], n: int, fail: bool = False):
        self.upload = np.array([*delta_y, *delta_c], np.float32)
        self.n, self.fail = n, fail
        self.controls: list[np.ndarray] = []

    def fit(self, params: Params, config: Mapping[str, Any], context: ClientContext) -> FitResult:
        self.controls.append(np.array(context.blobs["control"]))
        if self.fail:
            raise RuntimeError("offline")
        return FitResult(update=self.upload, num_examples=self.n)

    def evaluate(
        self, params: Params, config: Mapping[str, Any], context: ClientContext
    ) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=self.n)


def test_the_server_averages_models_and_moves_c_by_the_share_of_clients_that_returned() -> None:
    # Prepare: N = 4 clients, 2 of them fail, so |S| / N = 1/2
    clients = {
        0: ControlClient([1, 0], [2, 2], n=1),
        1: ControlClient([0, 4], [0, -2], n=3),
        2: ControlClient([9, 9], [9, 9], n=1, fail=True),
        3: ControlClient([9, 9], [9, 9], n=1, fail=True),
    }
    coord = Coordinator(
        strategy=Scaffold(),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.array([1.0, 1.0], np.float32),
        population=Population({cid: c.n for cid, c in clients.items()}),
    )

    # Execute
    first = coord.run_round(1)
    coord.run_round(2)

    # Assert: x' = x + (1 * [1, 0] + 3 * [0, 4]) / 4 = [1.25, 4]  (after round 1)
    #         c' = 0 + 2/4 * mean([2, 2], [0, -2]) = [0.5, 0]
    assert (first["returned"], first["failed"], first["status"]) == (2, 2, "ok")
    assert first["bytes_up"] == 2 * 4 * 4  # two uploads of (delta_y, delta_c): 4 floats each
    np.testing.assert_allclose(clients[0].controls[0], [0.0, 0.0])
    np.testing.assert_allclose(clients[0].controls[1], [0.5, 0.0])
    # round 2 repeats the same uploads: x'' = [1.5, 7], c'' = [1, 0]
    np.testing.assert_allclose(coord.params, [1.5, 7.0])
    np.testing.assert_allclose(coord.strategy_state["control"], [1.0, 0.0])
    assert coord.checkpoint()["strategy.control"].tolist() == [1.0, 0.0]


def test_a_failed_round_leaves_the_control_variate_unchanged() -> None:
    clients = {0: ControlClient([1, 0], [2, 2], n=1, fail=True)}
    coord = Coordinator(
        strategy=Scaffold(),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population({0: 1}),
    )

    assert coord.run_round(1)["status"] == "failed"

    np.testing.assert_array_equal(coord.strategy_state["control"], [0.0, 0.0])


def test_a_client_without_a_context_argument_is_told_why_it_cannot_run_scaffold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.strategies.test_fedavg_fedsgd import FixedClient

    coord = Coordinator(
        strategy=Scaffold(),
        engine=SequentialEngine(lambda cid: FixedClient([1, 1], [0, 0], 1)),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population({0: 1}),
    )

    with caplog.at_level("WARNING", logger="fedloom"):
        record = coord.run_round(1)

    assert (record["failed"], record["status"]) == (1, "failed")
    assert "FixedClient.fit takes no context argument" in caplog.text
