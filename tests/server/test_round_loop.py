"""The round loop: selection, skipped clients, failing and bad clients, streaming aggregation."""

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from fedloom.client.base import EvalResult, FitResult
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.selection import sample_clients
from fedloom.core.task import FIT, MODEL, Result, Task, Upload
from fedloom.core.validation import decode_update
from fedloom.engines import SequentialEngine
from fedloom.engines.base import MeasuresTransfer, Transfer
from fedloom.errors import ConfigError, UpdateRejected
from fedloom.server.coordinator import PHASES, Coordinator, Population
from fedloom.strategies import FedAvg

SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))


class DeltaClient:
    def __init__(self, delta: Any, n: int = 1, fail: bool = False) -> None:
        self.delta, self.n, self.fail = delta, n, fail

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        if self.fail:
            raise RuntimeError("disk full")
        return FitResult(update=self.delta, num_examples=self.n)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(
            loss=float(self.n), num_examples=self.n, metrics={"accuracy": self.n / 10}
        )


def test_sampling_is_seeded_sorted_and_respects_min_clients() -> None:
    a = sample_clients(list(range(100)), 0.1, 1, np.random.default_rng([0, 1]))
    b = sample_clients(list(range(100)), 0.1, 1, np.random.default_rng([0, 1]))
    assert a == b and len(a) == 10 and a == sorted(a)
    assert len(sample_clients(list(range(100)), 0.01, 5, np.random.default_rng(0))) == 5
    assert sample_clients([3, 1, 2], 1.0, 1, np.random.default_rng(0)) == [1, 2, 3]
    with pytest.raises(ConfigError, match="min_fit_clients=5 but only 3 clients have data"):
        sample_clients([0, 1, 2], 1.0, 5, np.random.default_rng(0))


def test_clients_without_data_are_skipped_and_reported() -> None:
    pop = Population({0: 5, 1: 0, 2: 3})
    assert pop.eligible == [0, 2] and pop.skipped == [1]


def test_failed_and_invalid_clients_are_excluded_and_counted() -> None:
    clients = {
        0: DeltaClient(np.array([1.0, 1.0], np.float32)),
        1: DeltaClient(np.array([np.nan, 0.0], np.float32)),
        2: DeltaClient(np.zeros(3, np.float32)),  # wrong size
        3: DeltaClient(None, fail=True),
        4: DeltaClient(np.array([3.0, 3.0], np.float32)),
    }
    coord = Coordinator(
        strategy=FedAvg(),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population(dict.fromkeys(clients, 1)),
    )
    record = coord.run_round(1)
    assert (record["selected"], record["returned"]) == (5, 2)
    assert (record["rejected"], record["failed"]) == (
        1,
        2,
    )  # NaN rejected; raise + bad shape failed
    np.testing.assert_allclose(coord.params, [2.0, 2.0])


def test_too_few_results_leave_the_model_unchanged() -> None:
    clients = {0: DeltaClient(None, fail=True)}
    coord = Coordinator(
        strategy=FedAvg(),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.ones(2, np.float32),
        population=Population({0: 1}),
    )
    assert coord.run_round(1)["status"] == "failed"
    np.testing.assert_array_equal(coord.params, [1.0, 1.0])


def test_validation_checks_the_upload_the_task_declares() -> None:
    task = Task(FIT, 1, 0, upload=Upload("float32", 2))
    with pytest.raises(UpdateRejected, match="does not match the task"):
        decode_update(Result(task, 1, payload=b"garbage"))
    with pytest.raises(UpdateRejected, match="over the cap of 4"):
        decode_update(Result(task, 1, payload=b"\x00" * 8), max_bytes=4)
    with pytest.raises(UpdateRejected, match="12 bytes, over the cap of 8"):
        decode_update(Result(task, 1, payload=b"\x00" * 12))
    nan = Float32Codec().encode(np.array([np.nan, np.inf], np.float32))
    with pytest.raises(UpdateRejected, match="2 non-finite values"):
        decode_update(Result(task, 1, payload=nan))
    with pytest.raises(UpdateRejected, match="num_examples must be >= 0"):
        decode_update(Result(task, -1, payload=b"\x00" * 8))
    with pytest.raises(UpdateRejected, match="takes no upload"):
        decode_update(Result(Task("evaluate", 1, 0), 1, payload=b""))
    # an upload twice the model's size is valid when the task asks for it (SCAFFOLD)
    double = Task(FIT, 1, 0, upload=Upload("float16", 4))
    vec = decode_update(Result(double, 1, payload=b"\x00\x3c" * 4))
    np.testing.assert_array_equal(vec, [1.0, 1.0, 1.0, 1.0])


class MeteredEngine:
    """An in-process engine that reports fixed measured traffic, as a network engine would."""

    name = "metered"

    def __init__(self, inner: SequentialEngine, transfer: Transfer) -> None:
        self.inner, self.transfer = inner, transfer

    def run(self, tasks: Any, blobs: Any) -> Any:
        return self.inner.run(tasks, blobs)

    def last_transfer(self) -> Transfer:
        return self.transfer

    def close(self) -> None:
        self.inner.close()


def test_bytes_are_measured_by_the_engine_when_it_can_and_assumed_otherwise() -> None:
    # Prepare: two clients, 8-byte params and updates, federated evaluation on both
    clients = {i: DeltaClient(np.array([1.0, 1.0], np.float32)) for i in range(2)}

    def coordinator(engine: Any) -> Coordinator:
        return Coordinator(
            strategy=FedAvg(),
            engine=engine,
            spec=SPEC,
            params=np.zeros(2, np.float32),
            population=Population({0: 1, 1: 1}, {0, 1}),
            federated_eval=True,
        )

    metered = MeteredEngine(SequentialEngine(clients.__getitem__), Transfer(5, 3))
    assert isinstance(metered, MeasuresTransfer)
    assert not isinstance(SequentialEngine(clients.__getitem__), MeasuresTransfer)

    # Execute
    assumed = coordinator(SequentialEngine(clients.__getitem__)).run_round(1)
    measured = coordinator(metered).run_round(1)

    # Assert: in process every selected client downloads (fit and evaluate); measured is as told
    assert (assumed["bytes_down"], assumed["bytes_up"]) == (2 * 8 + 2 * 8, 2 * 8)
    assert (measured["bytes_down"], measured["bytes_up"]) == (5 + 5, 3)


def test_federated_evaluation_reports_mean_std_and_worst10() -> None:
    clients = {i: DeltaClient(np.zeros(2, np.float32), n=i + 1) for i in range(10)}
    coord = Coordinator(
        strategy=FedAvg(),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population({i: i + 1 for i in range(10)}, set(range(10))),
        federated_eval=True,
    )
    record = coord.run_round(1)
    # accuracies 0.1 .. 1.0: mean 0.55, worst 10% = the single lowest
    assert record["fed_accuracy_mean"] == pytest.approx(0.55)
    assert record["fed_accuracy_worst10"] == pytest.approx(0.1)
    assert record["fed_loss_worst10"] == pytest.approx(10.0)  # loss: worst is highest


def test_a_round_whose_only_update_has_no_examples_fails_cleanly() -> None:
    # num_examples=0 used to pass validation and crash WeightedMean.finish (and the server); a
    # fit result without weight is now rejected, and a round without usable weight fails.
    clients = {0: DeltaClient(np.ones(2, np.float32), n=0)}
    coord = Coordinator(
        strategy=FedAvg(),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.ones(2, np.float32),
        population=Population({0: 1}),
    )

    record = coord.run_round(1)

    assert (record["returned"], record["rejected"], record["status"]) == (0, 1, "failed")
    np.testing.assert_array_equal(coord.params, [1.0, 1.0])


class EditingClient:
    """Writes into the params it receives, then uploads what it saw."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        self.seen.append(params["w"].copy())
        params["w"] += 100.0
        return FitResult(update=np.zeros(2, np.float32), num_examples=1)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=1)


def test_a_client_that_edits_its_params_in_place_does_not_change_what_others_receive() -> None:
    client = EditingClient()
    coord = Coordinator(
        strategy=FedAvg(),
        engine=SequentialEngine(lambda cid: client),
        spec=SPEC,
        params=np.array([1.0, 2.0], np.float32),
        population=Population({0: 1, 1: 1, 2: 1}),
    )

    coord.run_round(1)

    assert [s.tolist() for s in client.seen] == [[1.0, 2.0]] * 3
    np.testing.assert_array_equal(coord.params, [1.0, 2.0])


class OneClassClient(DeltaClient):
    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=1.0, num_examples=2, metrics={"accuracy": 0.5, "auc": float("nan")})


def test_federated_evaluation_drops_an_undefined_metric_and_keeps_the_rest() -> None:
    clients = {0: OneClassClient(np.zeros(2, np.float32)), 1: DeltaClient(np.zeros(2, np.float32))}
    coord = Coordinator(
        strategy=FedAvg(),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population({0: 1, 1: 1}, {0, 1}),
        federated_eval=True,
    )

    record = coord.run_round(1)

    # client 0's accuracy 0.5 and client 1's 0.1 both count; client 0's NaN AUC is left out
    assert record["fed_accuracy_mean"] == pytest.approx(0.3)
    assert "fed_auc_mean" not in record


def test_tasks_name_the_model_blob_and_the_upload_they_expect() -> None:
    seen: list[Task] = []

    class Recording(SequentialEngine):
        def run(self, tasks: Any, blobs: Any) -> Any:
            seen.extend(tasks)
            assert {t.blobs[MODEL] for t in tasks} <= set(blobs)
            return super().run(tasks, blobs)

    clients = {0: DeltaClient(np.ones(2, np.float32))}
    coord = Coordinator(
        strategy=FedAvg(),
        engine=Recording(clients.__getitem__),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population({0: 1}),
    )

    coord.run_round(1)

    assert seen[0].upload == Upload("float32", 2)


def test_server_transforms_run_on_the_aggregate_before_the_server_optimizer() -> None:
    # mean delta (1 * [3, 4] + 1 * [3, 4]) / 2 = [3, 4], norm 5, clipped to norm 1: [0.6, 0.8]
    clients = {i: DeltaClient(np.array([3.0, 4.0], np.float32)) for i in range(2)}
    coord = Coordinator(
        strategy=FedAvg(),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population({0: 1, 1: 1}),
        server_transforms=[{"name": "clip", "max_norm": 1.0}],
    )

    coord.run_round(1)

    np.testing.assert_allclose(coord.params, [0.6, 0.8], rtol=1e-6)


class SlowClient(DeltaClient):
    """Takes ``seconds`` of wall time to fit."""

    def __init__(self, seconds: float) -> None:
        super().__init__(np.array([1.0, 1.0], np.float32))
        self.seconds = seconds

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        time.sleep(self.seconds)
        return super().fit(params, config)


def test_phase_seconds_split_the_round_by_what_the_coordinator_waits_on() -> None:
    def slow_eval(params: Params) -> dict[str, Any]:
        time.sleep(0.06)
        return {"loss": 0.0}

    coord = Coordinator(
        strategy=FedAvg(),
        engine=SequentialEngine(lambda cid: SlowClient(0.04)),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population({0: 1, 1: 1}),
        central_eval=slow_eval,
    )
    record = coord.run_round(1)
    phases = record["phase_seconds"]
    assert tuple(phases) == PHASES
    assert all(v >= 0 for v in phases.values())
    assert phases["client_work"] >= 0.08  # two clients one after the other, 0.04 s each
    assert phases["evaluation"] >= 0.06
    # the client sleeps are not charged to any other phase
    others = sum(v for k, v in phases.items() if k not in ("client_work", "evaluation"))
    assert others < 0.04
    assert sum(phases.values()) <= record["seconds"]
    # a round without evaluation spends nothing on it
    assert coord.run_round(2, evaluate=False)["phase_seconds"]["evaluation"] == 0.0
