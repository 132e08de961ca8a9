"""Secure aggregation over gRPC with TLS: six real client processes, one SIGKILLed before it
uploads its masked input and one after; the round completes and later rounds go on."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy


def test_secagg_plus_round_survives_clients_killed_before_and_after_their_masked_input(
    tmp_path: Path, certs: Path
) -> None:
    # Prepare: two victims join first, so round 1 (which starts with any four) has both: client 4
    # trains slowly in round 1, client 5 unmasks slowly in round 1
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=3,
        partition={"num_clients": 6},
        strategy={"min_fit_clients": 3},
        secure_aggregation={"enabled": True, "mode": "secagg_plus"},
        server={"min_clients": 4, "heartbeat_timeout_s": 2.0},
    )
    port = h.free_port()
    log = tmp_path / "server.log"
    procs = [h.server(config, port, certs, tmp_path / "state", tmp_path / "out", log)]
    logs = [tmp_path / f"c{i}.log" for i in range(6)]
    try:
        h.listening(log, procs[0])
        procs.append(h.slow_client(port, 4, 6, certs, logs[4], fit_delay=30.0, rounds=[1]))
        unmask_env = {
            "FEDLOOM_TEST_PARTITION": "5/6",
            "FEDLOOM_TEST_UNMASK_DELAY": "30",
            "FEDLOOM_TEST_DELAY_ROUNDS": "1",
        }
        app = ["--app", "tests.deploy.apps:slow_unmask_client"]
        procs.append(h.client(port, "client-5", certs, logs[5], app, env=unmask_env))
        h.wait_for_line(log, "client client-4 ready", 90, procs[0])
        h.wait_for_line(log, "client client-5 ready", 90, procs[0])
        for i in range(4):
            procs.append(h.app_client(port, i, 6, certs, logs[i], "tests.deploy.apps:slow_client"))

        # Execute: kill client 4 while it trains (before its masked input), client 5 once it is
        # asked to unmask (after its masked input is in the sum)
        h.wait_for_line(logs[4], "fit round 1 started", 90, procs[1])
        procs[1].send_signal(signal.SIGKILL)
        h.wait_for_line(logs[5], "unmask round 1 started", 60, procs[2])
        procs[2].send_signal(signal.SIGKILL)
        assert h.wait(procs[0], 120, log) == 0, h.read(log)
        codes = [h.wait(p, 30, logs[i]) for i, p in enumerate(procs[3:])]
    finally:
        h.stop_all(procs)

    # Assert: every round succeeded; round 1 lost one client at the masked stage, one at unmask
    assert codes == [0, 0, 0, 0]
    records = {r["round"]: r for r in h.records(tmp_path / "out")}
    assert [records[r]["status"] for r in (1, 2, 3)] == ["ok", "ok", "ok"], h.read(log)
    hit = records[1]
    assert hit["secagg_dropped_masked"] == 1 and hit["secagg_dropped_unmask"] == 1
    assert hit["secagg_dropped_advertise"] == hit["secagg_dropped_share"] == 0
    # later rounds go on with the four others, losing no one
    for r in (2, 3):
        assert records[r]["secagg_dropped_masked"] == records[r]["secagg_dropped_unmask"] == 0
    assert records[3]["accuracy"] > records[1]["accuracy"]
