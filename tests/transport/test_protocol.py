"""The protocol over a real gRPC server on 127.0.0.1, in process: authentication, chunked
transfer of a model over 100 MB, the content-hash cache, compression and deadlines."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedloom.client.base import EvalResult, FitResult
from fedloom.client.deploy import ClientOptions, DeploymentClient
from fedloom.config import Config
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import EVALUATE, FIT, MODEL, Blob, Task, Upload, blob_table
from fedloom.engines.base import Transfer
from fedloom.engines.remote import RemoteEngine
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies import FedAvg
from fedloom.transport.certs import client_bundle, read_token
from fedloom.transport.client import Backoff, Connection
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.wire import PROTOCOL_VERSION
from tests.transport.conftest import MB, Running, serve, start_client, wait_ready

pytestmark = pytest.mark.deploy


class ConstantClient:
    """Returns ``value`` everywhere as its update; evaluates to the mean of the params."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.num_examples = 3
        self.seen: list[str] = []

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        self.seen.append("fit")
        spec = ParamSpec.of(params)
        return FitResult(update=np.full(spec.size, self.value, np.float32), num_examples=3)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        self.seen.append("evaluate")
        return EvalResult(loss=float(np.mean(params["w"])), num_examples=2)


def fit(model: Blob, client_id: int, round_num: int = 1) -> Task:
    """A fit task on ``model`` uploading one model-sized vector in its codec."""
    upload = Upload(model.codec.name, model.spec.size)
    return Task(FIT, round_num, client_id, {"round": round_num}, {MODEL: model.digest}, upload)


def evaluate(model: Blob, client_id: int, round_num: int = 1) -> Task:
    return Task(EVALUATE, round_num, client_id, {"round": round_num}, {MODEL: model.digest})


def test_model_over_100_mb_streams_in_chunks_and_is_cached(
    mtls_server: Running, certs: Path
) -> None:
    # Prepare: 30M float32 parameters (120 MB), 30 times the 4 MB message cap
    spec = ParamSpec(names=("w", "b"), shapes=((6000, 5000), (10,)), dtypes=("<f4", "<f4"))
    vec = np.random.default_rng(0).standard_normal(spec.size).astype(np.float32)
    gp = Blob.encode(spec, Float32Codec(), vec)
    assert len(gp.payload) > 100 * MB
    client = ConstantClient(0.25)
    started = start_client(mtls_server, certs, "client-0", lambda cid: client)
    wait_ready(mtls_server, 1)
    engine = RemoteEngine(mtls_server.hub, deadline_s=120)

    # Execute: a fit and an evaluation on the same global params
    fitted = list(engine.run([fit(gp, 0)], blob_table(gp)))
    ev = list(engine.run([evaluate(gp, 0)], blob_table(gp)))
    mtls_server.hub.finish()

    # Assert: the update arrived whole; the params were downloaded once
    assert started.join() == 0
    assert fitted[0].ok, fitted[0].error
    got = np.frombuffer(fitted[0].payload or b"", dtype="<f4")
    assert got.shape == (spec.size,) and np.all(got == 0.25)
    assert ev[0].ok and ev[0].metrics["loss"] == pytest.approx(
        float(np.mean(vec[:30_000_000])), rel=1e-5
    )
    assert client.seen == ["fit", "evaluate"]
    cache = started.deployment.cache
    assert cache.downloads == 1 and cache.bytes_down == len(gp.payload)
    assert engine.last_transfer() == Transfer(0, 0)  # the evaluation streamed nothing


def test_gzip_is_negotiated_and_tokens_authenticate(certs: Path) -> None:
    running = serve(certs, "token", compression="gzip")
    try:
        spec = ParamSpec(names=("w",), shapes=((1000,),), dtypes=("<f4",))
        gp = Blob.encode(spec, Float32Codec(), np.zeros(1000, np.float32))
        # Execute: a token client (no certificate) takes part
        token_only = certs / "token-only"
        token_only.mkdir(exist_ok=True)
        (token_only / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
        client = ConstantClient(1.0)
        started = start_client(
            running, token_only, "client-1", lambda cid: client, token=read_token(certs, "client-1")
        )
        wait_ready(running, 1)
        results = list(RemoteEngine(running.hub, deadline_s=30).run([fit(gp, 0)], blob_table(gp)))
        # Execute: a wrong token is refused with a clear reason
        conn = Connection(
            running.address,
            bundle=client_bundle(certs, "x", with_cert=False),
            max_message_bytes=4 * MB,
        )
        with pytest.raises(grpc.RpcError) as refused:
            conn.join("client-2", read_token(certs, "client-1"), ["fit"])
        conn.close()
        running.hub.finish()
        code = started.join()
    finally:
        running.stop()

    # Assert
    assert results[0].ok and started.deployment.cache.downloads == 1
    assert code == 0
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "invalid enrolment token for client 'client-2'" in (refused.value.details() or "")


def test_under_token_auth_a_session_id_alone_is_no_credential(certs: Path) -> None:
    # Prepare: two token clients; client-1 learns client-0's session id
    running = serve(certs, "token")
    bundle = client_bundle(certs, "x", with_cert=False)
    victim = Connection(running.address, bundle=bundle, max_message_bytes=4 * MB)
    thief = Connection(running.address, bundle=bundle, max_message_bytes=4 * MB)
    try:
        victim.join("client-0", read_token(certs, "client-0"), ["fit"])
        thief.join("client-1", read_token(certs, "client-1"), ["fit"])
        victim.ready(3, 0)

        # Execute: the thief calls with the victim's session id and its own token, then with
        # the victim's name and no token, then with a forged token for the victim
        thief.session_id = victim.session_id
        refusals = []
        for metadata in (
            thief.metadata,
            (("fedloom-client", "client-0"),),
            (("fedloom-client", "client-0"), ("fedloom-token", "00" * 32)),
        ):
            thief.metadata = metadata
            with pytest.raises(grpc.RpcError) as refused:
                thief.poll(0.1)
            refusals.append(refused.value)
        ok = victim.heartbeat()
    finally:
        victim.close()
        thief.close()
        running.stop()

    # Assert: every call refused, with why; the victim's own calls still work
    assert [r.code() for r in refusals] == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert "session of 'client-0' used with the enrolment token of 'client-1'" in (
        refusals[0].details() or ""
    )
    assert "client 'client-0' sent no enrolment token" in (refusals[1].details() or "")
    assert "invalid enrolment token for client 'client-0'" in (refusals[2].details() or "")
    assert ok


def test_old_protocol_and_unknown_sessions_are_refused(mtls_server: Running, certs: Path) -> None:
    conn = Connection(
        mtls_server.address, bundle=client_bundle(certs, "client-0"), max_message_bytes=4 * MB
    )
    try:
        with pytest.raises(grpc.RpcError) as old:
            conn.stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION + 1))
        conn.session_id = "not-a-session"
        with pytest.raises(grpc.RpcError) as unknown:
            conn.poll(0.1)
    finally:
        conn.close()
    assert old.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "protocol version" in (old.value.details() or "")
    assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "join again" in (unknown.value.details() or "")


def test_silent_clients_are_dropped_at_the_deadline(mtls_server: Running, certs: Path) -> None:
    # Prepare: a client that joins and then never polls (it holds the task forever)
    conn = Connection(
        mtls_server.address, bundle=client_bundle(certs, "client-0"), max_message_bytes=4 * MB
    )
    conn.join("client-0", "", ["fit"])
    conn.ready(10, 0)
    spec = ParamSpec(names=("w",), shapes=((4,),), dtypes=("<f4",))
    gp = Blob.encode(spec, Float32Codec(), np.zeros(4, np.float32))
    engine = RemoteEngine(mtls_server.hub, deadline_s=0.5)

    # Execute: one task for the silent client, one for a client that never connected
    start = time.monotonic()
    results = list(engine.run([fit(gp, 0), fit(gp, 7)], blob_table(gp)))
    conn.close()

    # Assert: both end as dropped, the round took the deadline and no longer
    assert time.monotonic() - start < 5
    errors = sorted(r.error or "" for r in results)
    assert errors[0] == "client 7 is not connected"
    assert errors[1].startswith("no result before the round deadline")
    assert engine.last_stats.dropped == 2


def test_backoff_grows_with_full_jitter() -> None:
    import random

    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(0))
    waits = [backoff.next() for _ in range(8)]
    assert all(0 < w <= 8.0 for w in waits)
    assert max(waits[:2]) <= 2.0
    backoff.reset()
    assert backoff.next() <= 1.0


def test_config_without_certs_needs_insecure(tmp_path: Path) -> None:
    from fedloom.errors import DeploymentError

    with pytest.raises(DeploymentError, match="--certs DIR is required"):
        DeploymentClient(
            ClientOptions(server="127.0.0.1:1", name="client-0"), lambda c, i: ConstantClient(0)
        )
    ca_only = tmp_path / "ca-only"
    ca_only.mkdir()
    (ca_only / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(DeploymentError, match="no credentials for 'client-0'"):
        DeploymentClient(
            ClientOptions(server="127.0.0.1:1", name="client-0", certs=ca_only),
            lambda c, i: ConstantClient(0),
        )
    assert Config().server.auth == "mtls"


def test_over_selection_takes_the_first_updates_and_cancels_the_rest(
    mtls_server: Running, certs: Path
) -> None:
    # Prepare: three clients; the strategy asked for one, the engine over-selects two more
    clients = [ConstantClient(float(i)) for i in range(3)]
    started = [
        start_client(mtls_server, certs, f"client-{i}", lambda cid: clients[cid]) for i in range(3)
    ]
    wait_ready(mtls_server, 3)
    spec = ParamSpec(names=("w",), shapes=((8,),), dtypes=("<f4",))
    gp = Blob.encode(spec, Float32Codec(), np.zeros(8, np.float32))
    engine = RemoteEngine(mtls_server.hub, deadline_s=30, over_selection=2.0)

    # Execute: a round's first stage may over-select; a later stage may not
    task = fit(gp, 0)
    results = list(engine.run([task], blob_table(gp)))
    stats = engine.last_stats
    engine.allow_over_selection(False)
    later = list(engine.run([task], blob_table(gp)))
    mtls_server.hub.finish()

    # Assert: one accepted update came back; the other tasks were cancelled, not waited for
    assert [s.join() for s in started] == [0, 0, 0]
    assert (stats.dispatched, stats.over_selected, stats.accepted) == (3, 2, 1)
    assert (engine.last_stats.dispatched, engine.last_stats.over_selected) == (1, 0)
    assert [r.task.client_id for r in later] == [0]
    assert [r.ok for r in results] == [True]
    assert stats.cancelled <= 2 and stats.dropped == 0
    # Assert: the extra tasks were copies of the strategy's task (blobs, upload, config)
    assert results[0].task.blobs == task.blobs and results[0].task.upload == task.upload


def test_bytes_count_what_was_streamed_so_cached_clients_download_nothing(
    mtls_server: Running, certs: Path
) -> None:
    # Prepare: two clients whose updates are zero, so FedAvg leaves the model unchanged and the
    # evaluation after the fit uses params both clients already hold
    clients = [ConstantClient(0.0) for _ in range(2)]
    started = [
        start_client(mtls_server, certs, f"client-{i}", lambda cid: clients[cid]) for i in range(2)
    ]
    wait_ready(mtls_server, 2)
    spec = ParamSpec(names=("w",), shapes=((1000,),), dtypes=("<f4",))
    size = 4 * spec.size
    engine = RemoteEngine(mtls_server.hub, deadline_s=30)
    coordinator = Coordinator(
        strategy=FedAvg(),
        engine=engine,
        spec=spec,
        params=np.ones(spec.size, np.float32),
        population=Population({0: 3, 1: 3}, {0, 1}),
        federated_eval=True,
    )

    # Execute: a round with fit and federated evaluation, then an evaluation alone
    record = coordinator.run_round(1)
    model = Blob.encode(spec, Float32Codec(), coordinator.params)
    evaluation = engine.run([evaluate(model, 0), evaluate(model, 1)], blob_table(model))
    assert all(r.ok for r in evaluation)
    mtls_server.hub.finish()
    assert [s.join() for s in started] == [0, 0]

    # Assert: each client downloaded the params once and uploaded one update; the evaluations
    # streamed nothing
    assert record["status"] == "ok" and record["fed_loss_mean"] == 1.0
    assert (record["bytes_down"], record["bytes_up"]) == (2 * size, 2 * size)
    assert engine.last_transfer() == Transfer(0, 0)
    assert [s.deployment.cache.downloads for s in started] == [1, 1]
