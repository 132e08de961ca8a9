"""300 stalled unauthenticated upload streams, and stalled authenticated ones, do not stop a
token-auth deployment: honest rounds keep completing at about their usual pace (real processes)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedloom.transport.certs import read_token
from fedloom.transport.client import credentials
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.proto import fedloom_transport_pb2_grpc as pb_grpc
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

STALLED = 300
STALLED_WITH_TOKEN = 20


def _token_folder(certs: Path, folder: Path, name: str) -> Path:
    """What a token-auth site holds: the CA certificate and its own token, no certificate."""
    folder.mkdir()
    (folder / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
    (folder / f"{name}.token").write_bytes((certs / f"{name}.token").read_bytes())
    return folder


def _stall(release: threading.Event) -> Iterator[pb.UploadChunk]:
    release.wait()
    yield from ()


def test_stalled_streams_do_not_stop_the_rounds(tmp_path: Path, certs: Path) -> None:
    # Prepare: a token-auth server (first message within 0.5 s) and two honest token clients
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=10,
        partition={"num_clients": 2},
        server={"min_clients": 2, "auth": "token", "first_message_s": 0.5},
    )
    port = h.free_port()
    log = tmp_path / "server.log"
    procs = [h.server(config, port, certs, tmp_path / "state", tmp_path / "out", log)]
    release = threading.Event()
    channels: list[grpc.Channel] = []
    try:
        h.listening(log, procs[0])
        for i in range(2):
            site = _token_folder(certs, tmp_path / f"site-{i}", f"client-{i}")
            data = ["--dataset", "digits", "--partition", f"{i}/2"]
            procs.append(h.client(port, f"client-{i}", site, tmp_path / f"c{i}.log", data))
        h.wait_for_line(log, "round 3/10", 90, procs[0])

        # Execute: from round 4 on, 300 streams with no credential and 20 with a valid token
        # for a name that never joined, none of which ever sends a message
        creds = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.crt").read_bytes())
        channels = [grpc.secure_channel(f"{h.HOST}:{port}", creds) for _ in range(10)]
        stubs = [pb_grpc.FederationStub(channel) for channel in channels]
        token = credentials("client-5", read_token(certs, "client-5"))
        calls = [
            stubs[0].UploadResult.future(_stall(release), timeout=60, metadata=token)
            for _ in range(STALLED_WITH_TOKEN)
        ]
        calls += [
            stub.UploadResult.future(_stall(release), timeout=60)
            for stub in stubs
            for _ in range(STALLED // len(stubs))
        ]

        assert h.wait(procs[0], 120, log) == 0, h.read(log)
        codes = [h.wait(p, 30, tmp_path / f"c{i}.log") for i, p in enumerate(procs[1:])]
        errors = [call.exception(timeout=30) for call in calls]
    finally:
        release.set()
        for channel in channels:
            channel.close()
        h.stop_all(procs)

    # Assert: every round completed, later rounds within 2x (plus scheduling noise) of the
    # first ones; every stalled call ended: refused (no credential, or over
    # server.max_concurrent_rpcs), closed by the first-message timeout, or cut when the server
    # exited; the reasons are in the log
    assert codes == [0, 0]
    records = h.records(tmp_path / "out")
    assert [r["status"] for r in records] == ["ok"] * 10
    before = sum(r["seconds"] for r in records[:3]) / 3
    after = sum(r["seconds"] for r in records[3:]) / 7
    assert after <= 2 * before + 1.0, (before, after)
    codes_seen = {e.code() for e in errors if isinstance(e, grpc.RpcError)}
    assert len([e for e in errors if e is not None]) == STALLED + STALLED_WITH_TOKEN
    assert grpc.StatusCode.UNAUTHENTICATED in codes_seen
    assert codes_seen <= {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    }
    # memory stays bounded: the server of this small run (torch included) peaks near 450 MB
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["deployment"]["peak_rss_mb"] < 1024
    server_log = h.read(log)
    assert "Traceback" not in server_log
    assert "the call carries no client name and enrolment token" in server_log
    assert "closed an upload stream" in server_log and "(client-5): no message for 0.5 s" in (
        server_log
    )
