"""FedBuff in a deployment: no round barrier. A slow client's update arrives rounds after it
started, weighted down by its staleness, while the fast clients keep the server stepping; a client
killed mid-task frees its slot."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

ROUNDS = 12
SLOW = 3  # client-3: 1.5 s per fit; the others 0.4 s


def test_rounds_do_not_wait_for_a_slow_client(tmp_path: Path, certs: Path) -> None:
    # Prepare: K = 2 updates per step, C = 4 clients at work
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=ROUNDS,
        partition={"num_clients": 4},
        strategy={"name": "fedbuff", "buffer_size": 2, "concurrency": 4},
        server={"min_clients": 3, "heartbeat_s": 0.3, "heartbeat_timeout_s": 1.5},
    )
    port = h.free_port()
    log = tmp_path / "server.log"
    procs = [h.server(config, port, certs, tmp_path / "state", tmp_path / "out", log)]
    logs = [tmp_path / f"c{i}.log" for i in range(4)]
    try:
        h.listening(log, procs[0])
        # the slow client joins first, so round 1 starts it
        procs.append(h.slow_client(port, SLOW, 4, certs, logs[SLOW], fit_delay=1.5))
        h.wait_for_line(log, "waiting for clients: 1/3 connected", 60, procs[0])
        for i in range(3):
            procs.append(h.slow_client(port, i, 4, certs, logs[i], fit_delay=0.4))

        # Execute: kill the slow client in the middle of its second fit
        h.wait_for_line(logs[SLOW], "fit round 1 finished", 60)
        second = re.compile(r"fit round ([2-9]|1\d) started")
        end = time.monotonic() + 60
        while not second.search(h.read(logs[SLOW])):
            assert time.monotonic() < end and procs[0].poll() is None, h.read(log)
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        assert h.wait(procs[0], 120, log) == 0, h.read(log)
        codes = [h.wait(p, 30, logs[i]) for i, p in enumerate(procs[2:])]
    finally:
        h.stop_all(procs)

    # Assert: every round stepped on K = 2 updates
    assert codes == [0, 0, 0]
    records = h.records(tmp_path / "out")
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    assert all(r["status"] == "ok" and r["returned"] == 2 for r in records), records
    assert records[0]["selected"] >= 3  # round 1 started every client connected, the slow one too
    # Assert: the slow client's first update, of round 1, arrived in a later round, weighted by
    # its staleness: the rounds in between did not wait for it
    stale = [r for r in records if r["staleness_max"] >= 2]
    assert stale, [r["staleness_max"] for r in records]
    assert all(r["in_flight"] >= 1 for r in records[:2])
    # Assert: its second task ended as dropped when its connection went silent
    assert sum(r["dropped"] for r in records) == 1
    assert "no heartbeat" in h.read(log)
