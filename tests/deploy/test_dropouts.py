"""Clients that die in the middle of a round do not stop it; the run goes on without them."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

ROUNDS = 5


def test_two_of_six_clients_killed_mid_round(tmp_path: Path, certs: Path) -> None:
    # Prepare: six slow clients; rounds may start with four (late joiners count from the next)
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=ROUNDS,
        partition={"num_clients": 6},
        strategy={"min_fit_clients": 3},
        server={"min_clients": 4, "heartbeat_timeout_s": 2.0},
    )
    port = h.free_port()
    log = tmp_path / "server.log"
    procs = [h.server(config, port, certs, tmp_path / "state", tmp_path / "out", log)]
    client_logs = [tmp_path / f"c{i}.log" for i in range(6)]
    try:
        h.listening(log, procs[0])
        for i in range(6):
            procs.append(h.slow_client(port, i, 6, certs, client_logs[i], fit_delay=1.5))
        h.wait_for_line(log, "| selected 6 |", 90, procs[0])
        full = int(re.findall(r"round (\d+)/\d+ \| selected 6 \|", h.read(log))[0])
        assert full < ROUNDS - 1, "too late to test later rounds"
        victims = [procs[5], procs[6]]
        for i in (4, 5):
            h.wait_for_line(client_logs[i], f"fit round {full + 1} started", 30)

        # Execute: kill two clients while they train
        for p in victims:
            p.send_signal(signal.SIGKILL)
        assert h.wait(procs[0], 120, log) == 0, h.read(log)
        codes = [h.wait(p, 30, client_logs[i]) for i, p in enumerate(procs[1:5])]
    finally:
        h.stop_all(procs)

    # Assert: the round completed from the four others, well before its deadline
    assert codes == [0, 0, 0, 0]
    records = {
        r["round"]: r
        for r in map(json.loads, (tmp_path / "out" / "metrics.jsonl").read_text().splitlines())
    }
    assert sorted(records) == list(range(1, ROUNDS + 1))
    hit = records[full + 1]
    assert (hit["selected"], hit["returned"], hit["dropped"], hit["status"]) == (6, 4, 2, "ok")
    assert hit["seconds"] < 15
    # Assert: later rounds continue with the survivors
    for r in range(full + 2, ROUNDS + 1):
        assert (records[r]["selected"], records[r]["returned"], records[r]["status"]) == (
            4,
            4,
            "ok",
        )
    assert "no heartbeat" in h.read(log)
