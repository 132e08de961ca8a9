"""Permission control: only the run's allow-list joins, and a revoked client is refused from its
next call on, without restarting the server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from fedloom.transport.certs import REVOKED, client_bundle, revoke
from fedloom.transport.client import Connection
from tests.transport.conftest import MB, serve, wait_ready

pytestmark = pytest.mark.deploy


def test_the_allow_list_and_revocation_are_honoured_while_the_server_runs(
    certs: Path, tmp_path: Path
) -> None:
    # Prepare: an mTLS server that allows client-0 and client-1, watching tmp_path/revoked.txt
    running = serve(
        certs,
        "mtls",
        allowed_clients=frozenset({"client-0", "client-1"}),
        revoked_file=tmp_path / REVOKED,
    )
    conns = {
        name: Connection(
            running.address, bundle=client_bundle(certs, name), max_message_bytes=4 * MB
        )
        for name in ("client-0", "client-1", "client-2")
    }
    refusals: dict[str, grpc.RpcError] = {}
    try:
        # Execute: a certified client off the list; then client-0 is revoked mid-run
        with pytest.raises(grpc.RpcError) as off_list:
            conns["client-2"].join("client-2", "", ["fit"])
        refusals["off_list"] = off_list.value
        for name in ("client-0", "client-1"):
            conns[name].join(name, "", ["fit"])
            conns[name].ready(3, 0)
        wait_ready(running, 2)
        revoke(tmp_path, "client-0")
        with pytest.raises(grpc.RpcError) as revoked:
            conns["client-0"].heartbeat()
        refusals["revoked"] = revoked.value
        with pytest.raises(grpc.RpcError) as rejoin:
            conns["client-0"].join("client-0", "", ["fit"])
        refusals["rejoin"] = rejoin.value
        still = conns["client-1"].heartbeat()
        ready = sorted(s.name for s in running.hub.ready_clients().values())
    finally:
        for conn in conns.values():
            conn.close()
        running.stop()

    # Assert
    assert {k: v.code() for k, v in refusals.items()} == dict.fromkeys(
        refusals, grpc.StatusCode.UNAUTHENTICATED
    )
    assert "client 'client-2' is not on this run's allow-list" in (
        refusals["off_list"].details() or ""
    )
    for key in ("revoked", "rejoin"):
        assert "client 'client-0' has been revoked" in (refusals[key].details() or "")
    assert still and ready == ["client-1"]  # client-0's session was closed
    assert (tmp_path / REVOKED).read_text() == "client-0\n"
