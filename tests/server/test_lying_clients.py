"""What a client claims is checked: its weight, the length of its update, its metrics, and the
model its update would produce."""

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from fedloom.aggregators import CoordinateMedian
from fedloom.client.base import EvalResult, FitResult
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import FIT, Result, Task, Upload
from fedloom.core.validation import bound_norm, decode_update, plausible_metrics
from fedloom.engines import SequentialEngine
from fedloom.errors import UpdateRejected
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies import FedAvg

SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))


class Liar:
    """Returns ``delta`` claiming ``n`` examples, and ``metrics`` from every task."""

    def __init__(self, delta: Any, n: int, metrics: Mapping[str, float] | None = None) -> None:
        self.delta, self.n, self.metrics = delta, n, dict(metrics or {})

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        return FitResult(update=self.delta, num_examples=self.n, metrics=self.metrics)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(
            loss=self.metrics.get("loss", 0.5), num_examples=self.n, metrics=self.metrics
        )


def _coordinator(
    clients: dict[int, Liar], declared: dict[int, int], **strategy: Any
) -> Coordinator:
    return Coordinator(
        strategy=FedAvg(**strategy),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.ones(2, np.float32),
        population=Population(declared, set(declared)),
    )


def test_a_fit_result_weighs_at_most_what_its_client_declared() -> None:
    # Prepare: client 1 declared 1 example and claims 10**9 with an update of -global
    clients = {
        0: Liar(np.array([2.0, 2.0], np.float32), n=3),
        1: Liar(np.array([-1.0, -1.0], np.float32), n=10**9),
    }
    coord = _coordinator(clients, {0: 3, 1: 1})

    # Execute
    record = coord.run_round(1)

    # Assert: weights 3 and 1, not 3 and 10**9: 1 + (3 * 2 + 1 * -1) / 4 = 2.25
    assert (record["status"], record["returned"]) == ("ok", 2)
    np.testing.assert_allclose(coord.params, [2.25, 2.25])


def test_a_fit_result_without_weight_is_rejected() -> None:
    task = Task(FIT, 1, 0, upload=Upload("float32", 2))
    with pytest.raises(UpdateRejected, match=r"positive num_examples .* got 0"):
        decode_update(Result(task, 0, payload=b"\x00" * 8))


def test_update_norms_are_clipped_or_rejected_as_configured() -> None:
    vec = np.array([3.0, 4.0], np.float32)  # norm 5
    np.testing.assert_allclose(bound_norm(vec, 10.0, "reject"), [3.0, 4.0])
    np.testing.assert_allclose(bound_norm(vec, 2.5, "clip"), [1.5, 2.0])
    with pytest.raises(UpdateRejected, match=r"norm 5 is over strategy\.max_update_norm=2\.5"):
        bound_norm(vec, 2.5, "reject")

    # in the round loop: [30, 40] is clipped to norm 5 = [3, 4]; mean with [1, 0] is [2, 2]
    clients = {
        0: Liar(np.array([1.0, 0.0], np.float32), n=1),
        1: Liar(np.array([30.0, 40.0], np.float32), n=1),
    }
    clipped = _coordinator(clients, {0: 1, 1: 1}, max_update_norm=5.0)
    clipped.run_round(1)
    np.testing.assert_allclose(clipped.params, [3.0, 3.0])
    rejected = _coordinator(
        clients, {0: 1, 1: 1}, max_update_norm=5.0, max_update_norm_action="reject"
    )
    record = rejected.run_round(1)
    assert (record["returned"], record["rejected"]) == (1, 1)
    np.testing.assert_allclose(rejected.params, [2.0, 1.0])


def test_a_round_whose_new_model_is_not_finite_fails_and_names_the_suspect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: finite updates whose sum overflows float32 (3e38 + 3e38 = inf)
    big = float(np.finfo(np.float32).max) * 0.9
    clients = {
        0: Liar(np.array([0.5, 0.5], np.float32), n=1),
        1: Liar(np.array([big, big], np.float32), n=10),
    }
    coord = Coordinator(
        strategy=FedAvg(),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.full(2, big, np.float32),
        population=Population({0: 1, 1: 10}),
    )

    # Execute
    record = coord.run_round(1)

    # Assert: nothing applied; the log names client 1 first
    assert record["status"] == "failed"
    np.testing.assert_array_equal(coord.params, np.full(2, big, np.float32))
    assert "the new params would not be finite" in caplog.text
    assert "Suspect updates, longest first: client 1 (norm 4.331e+38), client 0" in caplog.text


def test_implausible_metrics_are_left_out_with_a_reason() -> None:
    kept, dropped = plausible_metrics(
        {
            "accuracy": 2.5e299,
            "f1_macro": 0.5,
            "train_loss": 1e308,
            "loss": -1.0,
            "rmse": 3.0,
            "r2": -4.0,
            "auc": float("nan"),
        }
    )
    assert kept == {"f1_macro": 0.5, "rmse": 3.0, "r2": -4.0}
    assert dropped == {
        "accuracy": "2.5e+299 is outside [0, 1]",
        "train_loss": "1e+308 is outside [0, 3.403e+38]",
        "loss": "-1 is outside [0, 3.403e+38]",
        "auc": "nan is not finite",
    }


def test_federated_evaluation_and_train_loss_ignore_implausible_metrics() -> None:
    clients = {
        0: Liar(np.zeros(2, np.float32), n=1, metrics={"accuracy": 0.5, "train_loss": 2.0}),
        1: Liar(np.zeros(2, np.float32), n=1, metrics={"accuracy": 2.5e299, "train_loss": 1e308}),
    }
    coord = _coordinator(clients, {0: 1, 1: 1})
    coord.federated_eval = True

    record = coord.run_round(1)

    assert record["train_loss"] == 2.0
    assert record["fed_accuracy_mean"] == 0.5


def test_a_robust_aggregator_takes_the_streamed_updates_of_the_round() -> None:
    # median of [1, 1], [2, 0] and the attacker's [-1000, 1000] (which claims all the weight)
    clients = {
        0: Liar(np.array([1.0, 1.0], np.float32), n=1),
        1: Liar(np.array([2.0, 0.0], np.float32), n=1),
        2: Liar(np.array([-1000.0, 1000.0], np.float32), n=10**6),
    }
    coord = _coordinator(clients, {0: 1, 1: 1, 2: 10**6}, aggregator_factory=CoordinateMedian)

    coord.run_round(1)

    np.testing.assert_array_equal(coord.params, [2.0, 2.0])  # 1 + median: [1, 1]
