"""Tasks over a real gRPC server on 127.0.0.1: several blobs per task, cached by content hash;
uploads of the size the task declares; metrics-only results; custom task kinds; client state kept
by the deployment client across rounds."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from fedloom.client.base import Client, ClientContext, EvalResult, FitResult
from fedloom.client.execute import STAGES, StageOutput, register_stage, stage_kinds
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import EVALUATE, FIT, MODEL, Blob, Result, Task, Upload, blob_table
from fedloom.engines.base import Transfer
from fedloom.engines.remote import RemoteEngine
from fedloom.transport.client import Connection
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from tests.transport.conftest import (
    Running,
    next_task,
    raw_client,
    start_client,
    wait_ready,
)

pytestmark = pytest.mark.deploy

SPEC = ParamSpec(names=("w",), shapes=((4, 5),), dtypes=("<f4",))
CONTROL = "control"


def _blob(values: np.ndarray) -> Blob:
    return Blob.encode(SPEC, Float32Codec(), values.astype(np.float32))


MODEL_BLOB = _blob(np.arange(SPEC.size))
CONTROL_BLOB = _blob(np.linspace(-1.0, 1.0, SPEC.size))


class ControlClient:
    """Uploads ``(w + control, control)``, twice the model's size as SCAFFOLD does, and counts its
    fits in its client state."""

    num_examples = 2

    def __init__(self) -> None:
        self.started_from: list[float] = []

    def fit(
        self, params: Params, config: Mapping[str, Any], context: ClientContext | None = None
    ) -> FitResult:
        assert context is not None
        control = context.blobs[CONTROL]
        fits = context.state.get("fits", np.zeros(1, np.float32))
        self.started_from.append(float(fits[0]))
        context.state["fits"] = fits + 1
        update = np.concatenate([params["w"].ravel() + control, control])
        return FitResult(update=update, num_examples=2)

    def evaluate(
        self, params: Params, config: Mapping[str, Any], context: ClientContext | None = None
    ) -> EvalResult:
        return EvalResult(loss=float(params["w"].sum()), num_examples=1)


class NaNMetricsClient:
    """A client whose AUC is undefined (its split has one class)."""

    num_examples = 3

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        return FitResult(
            update=np.zeros(SPEC.size, np.float32),
            num_examples=3,
            metrics={"train_loss": 0.5, "train_auc": float("nan")},
        )

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.25, num_examples=3, metrics={"auc": float("nan"), "accuracy": 1.0})


def _fit(round_num: int, parts: int = 1, blobs: tuple[Blob, ...] = (MODEL_BLOB,)) -> Task:
    roles = dict(zip((MODEL, CONTROL), (b.digest for b in blobs), strict=False))
    return Task(
        FIT, round_num, 0, {"round": round_num}, roles, Upload("float32", parts * SPEC.size)
    )


def _evaluate(round_num: int) -> Task:
    return Task(EVALUATE, round_num, 0, {"round": round_num}, {MODEL: MODEL_BLOB.digest})


def _one(engine: RemoteEngine, task: Task) -> Result:
    results = list(engine.run([task], blob_table(MODEL_BLOB, CONTROL_BLOB)))
    assert len(results) == 1
    return results[0]


def test_two_blobs_are_downloaded_once_and_the_client_state_carries_over(
    plain_server: Running,
) -> None:
    # Prepare: a client with state and a task naming the model and a control variate
    client = ControlClient()
    started = start_client(plain_server, None, "client-0", lambda cid: client)
    wait_ready(plain_server, 1)
    engine = RemoteEngine(plain_server.hub, deadline_s=30)
    both = (MODEL_BLOB, CONTROL_BLOB)

    # Execute: round 1 (fit, then an evaluation), round 2, and round 2 again (a retried round)
    first = _one(engine, _fit(1, parts=2, blobs=both))
    first_transfer = engine.last_transfer()
    evaluation = _one(engine, _evaluate(1))
    second = _one(engine, _fit(2, parts=2, blobs=both))
    second_transfer = engine.last_transfer()
    retried = _one(engine, _fit(2, parts=2, blobs=both))
    plain_server.hub.finish()

    # Assert: the upload of twice the model's size was accepted, and carries both blobs decoded
    assert started.join() == 0
    assert first.ok, first.error
    w, control = MODEL_BLOB.decode(), CONTROL_BLOB.decode()
    np.testing.assert_array_equal(
        np.frombuffer(first.payload or b"", "<f4"), np.concatenate([w + control, control])
    )
    # Assert: each blob was downloaded once; the later tasks named the same digests
    cache = started.deployment.cache
    both_bytes = len(MODEL_BLOB.payload) + len(CONTROL_BLOB.payload)
    assert (cache.downloads, cache.bytes_down) == (2, both_bytes)
    assert first_transfer == Transfer(both_bytes, 2 * len(MODEL_BLOB.payload))
    assert second_transfer.bytes_down == 0
    assert sorted(cache.blobs) == sorted(b.digest for b in both)
    # Assert: round 2 started from the state round 1's fit left (the evaluation kept it), and
    # the retried round 2 from the same state
    assert evaluation.ok and evaluation.metrics["loss"] == float(w.sum())
    assert second.ok and retried.ok
    assert client.started_from == [0.0, 1.0, 1.0]
    assert all(r.state is None for r in (first, second, retried))


def _header(conn: Connection, task: pb.TaskProto, payload_bytes: int) -> pb.UploadChunk:
    return pb.UploadChunk(
        header=pb.UploadHeader(
            session_id=conn.session_id,
            task_id=task.task_id,
            num_examples=5,
            payload_bytes=payload_bytes,
            codec="float32",
        )
    )


def _run_in_thread(engine: RemoteEngine, task: Task) -> tuple[threading.Thread, list[Result]]:
    results: list[Result] = []
    thread = threading.Thread(
        target=lambda: results.extend(engine.run([task], blob_table(MODEL_BLOB)))
    )
    thread.start()
    return thread, results


CHUNK = 64


def test_uploads_over_the_declared_size_are_refused_before_they_are_read(
    plain_server: Running,
) -> None:
    # Prepare: a hand-driven client, and fit tasks of one model-sized upload
    conn = raw_client(plain_server)
    engine = RemoteEngine(plain_server.hub, deadline_s=30)
    size = len(MODEL_BLOB.payload)
    replies = []
    read = []
    try:
        for round_num, declared, sent in ((1, 2 * size, 2 * size), (2, size, 4 * size)):
            thread, results = _run_in_thread(engine, _fit(round_num))
            task = next_task(conn)
            up0 = plain_server.hub.traffic()[1]
            # Execute: round 1 declares twice the model's size (what a SCAFFOLD task would
            # take); round 2 declares the right size and streams four times as much
            data = [pb.UploadChunk(data=bytes(CHUNK)) for _ in range(sent // CHUNK)]
            replies.append(conn.stub.UploadResult(iter([_header(conn, task, declared), *data])))
            thread.join(30)
            read.append(plain_server.hub.traffic()[1] - up0)
            # delivered as rejected, with the reason, and without the bytes
            assert [(r.rejected is not None, r.payload) for r in results] == [(True, None)]
            assert engine.last_stats.rejected == 1
    finally:
        conn.close()

    # Assert: the first was refused on its header, with nothing read; the second at the first
    # message that went over its declared size (the second of 64 bytes, for 80 declared)
    assert not replies[0].accepted
    assert f"the task's upload (20 values of float32) takes at most {size} bytes" in (
        replies[0].reason
    )
    assert read[0] == 0
    assert not replies[1].accepted
    assert f"exceeds the size cap: it declared {size} bytes and sent more" in replies[1].reason
    assert read[1] == 2 * CHUNK


def test_non_finite_metrics_are_left_out_and_the_result_is_kept(plain_server: Running) -> None:
    started = start_client(plain_server, None, "client-0", lambda cid: NaNMetricsClient())
    wait_ready(plain_server, 1)
    engine = RemoteEngine(plain_server.hub, deadline_s=30)

    evaluation = _one(engine, _evaluate(1))
    fitted = _one(engine, _fit(1))
    plain_server.hub.finish()

    assert started.join() == 0
    assert evaluation.ok and evaluation.metrics == {"loss": 0.25, "accuracy": 1.0}
    assert evaluation.num_examples == 3
    assert fitted.ok and fitted.metrics == {"train_loss": 0.5}
    assert fitted.payload == bytes(len(MODEL_BLOB.payload))


EXAMPLES = "count_examples"


def _count_examples(
    client: Client, task: Task, params: Params, context: ClientContext
) -> StageOutput:
    n = int(getattr(client, "num_examples", 0))
    return StageOutput(None, n, {"examples": float(n), "w_sum": float(params["w"].sum())})


@pytest.fixture
def custom_stage() -> Iterator[str]:
    """A stage registered as an ``--app`` module registers it: before the client joins."""
    register_stage(EXAMPLES, _count_examples)
    yield EXAMPLES
    del STAGES[EXAMPLES]


def test_a_custom_task_kind_takes_metrics_only(plain_server: Running, custom_stage: str) -> None:
    # Prepare: a deployment client (which advertises every registered stage) and a raw client
    # that runs fit and evaluate only
    started = start_client(plain_server, None, "client-0", lambda cid: NaNMetricsClient())
    wait_ready(plain_server, 1)
    conn = raw_client(plain_server)
    wait_ready(plain_server, 2)
    engine = RemoteEngine(plain_server.hub, deadline_s=30)
    tasks = [
        Task(custom_stage, 1, cid, {}, {MODEL: MODEL_BLOB.digest}, upload=None) for cid in (0, 1)
    ]

    # Execute
    results = {r.task.client_id: r for r in engine.run(tasks, blob_table(MODEL_BLOB))}
    conn.close()
    plain_server.hub.finish()

    # Assert
    assert started.join() == 0
    assert plain_server.hub.ready_clients()[0].task_kinds == frozenset(stage_kinds())
    assert results[0].ok, results[0].error
    w_sum = float(MODEL_BLOB.decode().sum())
    assert results[0].metrics == {"examples": 3.0, "w_sum": w_sum}
    assert results[0].payload is None and results[0].num_examples == 3
    assert results[1].error is not None
    assert "client raw does not run 'count_examples' tasks" in results[1].error
