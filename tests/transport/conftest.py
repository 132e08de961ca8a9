from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedloom.client.base import Client
from fedloom.client.deploy import ClientOptions, DeploymentClient
from fedloom.config import Config
from fedloom.core.task import EVALUATE, FIT
from fedloom.transport.certs import create_certs, read_enrolment_key, server_bundle
from fedloom.transport.client import Connection
from fedloom.transport.hub import Hub
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.server import FederationService, ServiceSettings, start_server

MB = 1024 * 1024


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    create_certs(folder, 3)
    return folder


@dataclass
class Running:
    hub: Hub
    server: grpc.Server
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.hub.finish()
        self.server.stop(0)


def serve(certs: Path | None, auth: str = "mtls", **settings: object) -> Running:
    """A real gRPC server on 127.0.0.1 (an ephemeral port) in this process."""
    ids: dict[str, int] = {}
    lock = threading.Lock()

    def client_id_for(name: str) -> int:
        # Clients join from several threads at once; each name gets its own id.
        with lock:
            return ids.setdefault(name, len(ids))

    hub = Hub(client_id_for, heartbeat_timeout=10.0)
    base: dict[str, object] = dict(
        run_id="test",
        config_json=Config().model_dump_json(),
        auth=auth,
        enrolment_key=read_enrolment_key(certs) if certs and auth == "token" else None,
        heartbeat_seconds=1.0,
        poll_seconds=1.0,
        chunk_bytes=1 * MB,
        compression="none",
    )
    base.update(settings)
    service = FederationService(hub, ServiceSettings(**base))  # type: ignore[arg-type]
    server, port = start_server(
        service,
        "127.0.0.1:0",
        bundle=server_bundle(certs) if certs else None,
        require_client_cert=auth == "mtls",
        max_message_bytes=4 * MB,
        max_workers=16,
    )
    return Running(hub, server, port)


@pytest.fixture
def mtls_server(certs: Path) -> Iterator[Running]:
    running = serve(certs, "mtls")
    yield running
    running.stop()


@pytest.fixture
def plain_server() -> Iterator[Running]:
    """A plaintext server (``--insecure``), for tests about tasks rather than security."""
    running = serve(None, "none")
    yield running
    running.stop()


@dataclass
class Started:
    """A deployment client running in a thread, and the exit code it returned."""

    deployment: DeploymentClient
    thread: threading.Thread
    codes: list[int]

    def join(self) -> int:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the deployment client did not exit"
        return self.codes[0]


def start_client(
    running: Running,
    certs: Path | None,
    name: str,
    client_fn: Callable[[int], Client],
    **opts: Any,
) -> Started:
    """A ``DeploymentClient`` in a thread whose local Client is ``client_fn(id)``, of the id the
    server gives it (so each builds its own partition whatever order the clients join in)."""
    deployment = DeploymentClient(
        ClientOptions(
            server=running.address,
            name=name,
            certs=certs,
            insecure=certs is None,
            give_up_after=5,
            quiet=True,
            **opts,
        ),
        lambda cfg, cid: client_fn(cid),
    )
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(deployment.run()), name=name)
    thread.start()
    return Started(deployment, thread, codes)


def wait_ready(running: Running, n: int) -> None:
    end = time.monotonic() + 30
    while len(running.hub.ready_clients()) < n:
        assert time.monotonic() < end, "clients did not connect"
        time.sleep(0.02)


def raw_client(running: Running) -> Connection:
    """A bare connection (no DeploymentClient) that has joined as ``raw`` with 5 examples, for
    tests that speak the protocol by hand."""
    conn = Connection(running.address, bundle=None, max_message_bytes=4 * MB)
    conn.join("raw", "", [FIT, EVALUATE])
    conn.ready(5, 0)
    return conn


def next_task(conn: Connection) -> pb.TaskProto:
    """The next task handed to ``conn``, polling for up to about 30 s."""
    for _ in range(30):
        reply = conn.poll(1.0)
        if reply.WhichOneof("outcome") == "task":
            return reply.task
    raise AssertionError("no task was handed out")
