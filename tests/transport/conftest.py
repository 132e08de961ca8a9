from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fedloom.config import Config
from fedloom.transport.certs import create_certs, read_enrolment_key, server_bundle
from fedloom.transport.hub import Hub
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


def serve(certs: Path | None, auth: str = "mtls", **settings: object) -> Running:
    """A real gRPC server on 127.0.0.1 (an ephemeral port) in this process."""
    ids: dict[str, int] = {}
    hub = Hub(lambda name: ids.setdefault(name, len(ids)), heartbeat_timeout=10.0)
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
    running.hub.finish()
    running.server.stop(0)
