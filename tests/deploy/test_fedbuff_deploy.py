"""FedBuff in a deployment: no round barrier. A slow client's update arrives rounds after it
started, weighted down by its staleness, while the fast clients keep the server stepping; a client
killed mid-task frees its slot; a killed server resumes from its last step with fresh tasks."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

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


def test_a_killed_server_resumes_from_its_last_step_with_fresh_tasks(
    tmp_path: Path, certs: Path
) -> None:
    # Prepare: K = 2, C = 3; client-2 takes 2 s a fit, so a task is in flight at the kill
    rounds = 6
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=rounds,
        partition={"num_clients": 3},
        strategy={"name": "fedbuff", "buffer_size": 2, "concurrency": 3},
        server={"min_clients": 3},
    )
    port = h.free_port()
    state, out = tmp_path / "state", tmp_path / "out"
    first_log, second_log = tmp_path / "server-1.log", tmp_path / "server-2.log"
    procs = [h.server(config, port, certs, state, out, first_log)]
    logs = [tmp_path / f"c{i}.log" for i in range(3)]
    try:
        h.listening(first_log, procs[0])
        for i in range(3):
            delay = 2.0 if i == 2 else 0.3
            procs.append(h.slow_client(port, i, 3, certs, logs[i], fit_delay=delay))
        h.wait_for_line(first_log, f"round 3/{rounds} |", 90, procs[0])

        # Execute: kill -9 while client-2's task is in flight, then restart on the same state
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        procs.append(h.server(config, port, certs, state, out, second_log))
        assert h.wait(procs[-1], 120, second_log) == 0, h.read(second_log)
        codes = [h.wait(p, 30, logs[i]) for i, p in enumerate(procs[1:4])]
    finally:
        h.stop_all(procs)

    # Assert: every round once, each a server step on K updates, the version one per round
    second = h.read(second_log)
    resumed_after = int(second.split("after round ")[1].split()[0])
    assert resumed_after >= 3, second
    assert codes == [0, 0, 0]
    records = h.records(out)
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    assert all(r["status"] == "ok" and r["returned"] == 2 for r in records), records
    last = load_file(str(state / "checkpoints" / f"round-{rounds:04d}.safetensors"))
    assert last["strategy.fedbuff/version"].tolist() == [rounds]
    # Assert: the restarted server used no task of the first one: its first step's updates all
    # started in that round
    if resumed_after < rounds:
        assert records[resumed_after]["staleness_max"] == 0
