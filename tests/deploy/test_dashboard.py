"""`fedloom server --dashboard`: the page's state carries the server's client table."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy
ROUNDS = 2


def _state(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=10) as response:
        value: dict[str, Any] = json.loads(response.read())
        return value


def test_the_dashboard_shows_each_clients_rounds_failures_and_rejections(
    tmp_path: Path, certs: Path
) -> None:
    config = h.write_config(tmp_path / "run.yaml", rounds=ROUNDS, server={"min_clients": 3})
    port, dash = h.free_port(), h.free_port()
    log, out = tmp_path / "server.log", tmp_path / "out"
    server = h.server(config, port, certs, tmp_path / "state", out, log, ["--dashboard", str(dash)])
    procs = [server]
    try:
        h.listening(log, server)
        assert f"dashboard: http://127.0.0.1:{dash}/" in h.read(log)
        data = ["--dataset", "digits", "--partition", "0/1"]
        procs.append(h.client(port, "client-0", certs, tmp_path / "c0.log", data))
        for name, app in (("client-1", "failing_client"), ("client-2", "poisoned_client")):
            procs.append(
                h.client(
                    port,
                    name,
                    certs,
                    tmp_path / f"{name}.log",
                    ["--app", f"tests.deploy.apps:{app}"],
                )
            )
        h.wait_for_line(log, "run finished; the dashboard stays at", 120, server)

        state = _state(dash)
        assert [r["round"] for r in state["records"]] == list(range(1, ROUNDS + 1))
        live = state["live"]
        assert (live["mode"], live["status"], live["rounds"]) == ("deployment", "finished", ROUNDS)
        table = {c["name"]: c for c in live["clients"]}
        assert sorted(table) == ["client-0", "client-1", "client-2"]
        counts = {
            name: (c["rounds_joined"], c["results"], c["failures"], c["rejected"])
            for name, c in table.items()
        }
        assert counts == {
            "client-0": (ROUNDS, ROUNDS, 0, 0),
            "client-1": (ROUNDS, 0, ROUNDS, 0),
            "client-2": (ROUNDS, 0, 0, ROUNDS),
        }
        assert "non-finite values" in table["client-2"]["last_rejection"]
        assert table["client-0"]["last_rejection"] is None
    finally:
        server.send_signal(signal.SIGINT)
        code = h.wait(server, 30, log)
        h.stop_all(procs)
    assert code == 0, h.read(log)
