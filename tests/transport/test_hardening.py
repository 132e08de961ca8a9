"""Cheap hostile traffic costs the server little: oversized Joins and odd names are refused, a
session polls once at a time, stalled uploads are closed, malformed requests are one log line."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedloom.transport.certs import client_bundle, read_token
from fedloom.transport.client import Connection
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.server import MAX_JOIN_BYTES
from tests.transport.conftest import MB, Running, serve

pytestmark = pytest.mark.deploy


def _plain(running: Running) -> Connection:
    return Connection(running.address, bundle=None, max_message_bytes=4 * MB)


def test_odd_names_and_oversized_joins_are_refused_with_a_short_log_line(
    plain_server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    conn = _plain(plain_server)
    refused = []
    try:
        for name in ("client-0\n", "x" * 1_000_000):
            with pytest.raises(grpc.RpcError) as exc:
                conn.join(name, "", ["fit"])
            refused.append(exc.value)
    finally:
        conn.close()
    assert [r.code() for r in refused] == [grpc.StatusCode.UNAUTHENTICATED] * 2
    assert "invalid client name 'client-0\\n'" in (refused[0].details() or "")
    assert f"(at most {MAX_JOIN_BYTES})" in (refused[1].details() or "")
    assert max(len(r.getMessage()) for r in caplog.records) < 300


def test_a_session_has_one_poll_in_flight(plain_server: Running) -> None:
    conn = _plain(plain_server)
    try:
        conn.join("client-0", "", ["fit"])
        conn.ready(3, 0)
        first = threading.Thread(target=conn.poll, args=(1.0,))
        first.start()
        time.sleep(0.3)  # the first poll is held by the server (poll_seconds 1)
        with pytest.raises(grpc.RpcError) as second:
            conn.poll(1.0)
        first.join()
        conn.poll(1.0)  # once it returned, the session polls again
    finally:
        conn.close()
    assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already has a poll in flight" in (second.value.details() or "")


def _stall(release: threading.Event) -> Iterator[pb.UploadChunk]:
    release.wait()
    yield from ()


def test_stalled_uploads_are_closed_and_unauthenticated_ones_never_read(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = serve(certs, "token", first_message_s=0.5)
    release = threading.Event()
    conn = Connection(
        running.address, bundle=client_bundle(certs, "x", with_cert=False), max_message_bytes=MB
    )
    try:
        conn.join("client-0", read_token(certs, "client-0"), ["fit"])
        start = time.monotonic()
        anonymous = conn.stub.UploadResult.future(_stall(release), timeout=20)
        stalled = conn.stub.UploadResult.future(_stall(release), timeout=20, metadata=conn.metadata)
        anonymous_error = anonymous.exception(timeout=20)
        stalled_error = stalled.exception(timeout=20)
        elapsed = time.monotonic() - start
        end = time.monotonic() + 5  # the handler logs once the client has seen the cancel
        while "closed an upload stream" not in caplog.text and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        release.set()
        conn.close()
        running.stop()
    assert isinstance(anonymous_error, grpc.RpcError) and isinstance(stalled_error, grpc.RpcError)
    assert anonymous_error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "carries no client name and enrolment token" in (anonymous_error.details() or "")
    assert stalled_error.code() == grpc.StatusCode.CANCELLED
    assert elapsed < 5
    assert "closed an upload stream" in caplog.text and "no message for 0.5 s" in caplog.text


def test_a_malformed_request_is_one_line_without_a_traceback(
    plain_server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    channel = grpc.insecure_channel(plain_server.address)
    call = channel.unary_unary(
        "/fedloom.transport.v1.Federation/Join",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as exc:
            call(b"\xff\xff\xff\xff not a protobuf", timeout=10)
    finally:
        channel.close()
    assert exc.value.code() == grpc.StatusCode.INTERNAL
    dropped = [r for r in caplog.records if "not a valid protobuf" in r.getMessage()]
    assert dropped and all(r.exc_info is None for r in dropped)
    assert "Traceback" not in caplog.text
