"""SIGKILL the server mid-run; restarted on the same --state it finishes, losing no round."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedloom.config import load_config
from fedloom.simulation import Simulation
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

ROUNDS = 5


def test_server_killed_after_round_2_resumes_and_finishes(tmp_path: Path, certs: Path) -> None:
    # Prepare: slow fits, so the kill lands in round 3, not after the run
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=ROUNDS,
        partition={"num_clients": 2},
        server={"min_clients": 2},
    )
    port = h.free_port()
    state, out = tmp_path / "state", tmp_path / "out"
    first_log, second_log = tmp_path / "server-1.log", tmp_path / "server-2.log"
    procs = [h.server(config, port, certs, state, out, first_log)]
    try:
        h.listening(first_log, procs[0])
        for i in range(2):
            procs.append(h.slow_client(port, i, 2, certs, tmp_path / f"c{i}.log", fit_delay=0.5))
        h.wait_for_line(first_log, f"round 2/{ROUNDS} |", 90, procs[0])

        # Execute: kill -9, then restart with the same state folder
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        procs.append(h.server(config, port, certs, state, out, second_log))
        assert h.wait(procs[-1], 120, second_log) == 0, h.read(second_log)
        codes = [h.wait(p, 30, tmp_path / f"c{i}.log") for i, p in enumerate(procs[1:3])]
    finally:
        h.stop_all(procs)

    # Assert: the second server resumed after round 2 (or 3, if it completed before the kill)
    second = h.read(second_log)
    resumed_after = int(second.split("resuming run ")[1].split("after round ")[1].split()[0])
    assert resumed_after in (2, 3), second
    assert f"round {resumed_after + 1}/{ROUNDS} |" in second
    assert codes == [0, 0]  # the clients reconnected by themselves and saw the run finish
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    with sqlite3.connect(state / "state.sqlite3") as db:
        rounds = [r[0] for r in db.execute("SELECT round FROM rounds ORDER BY round")]
        assert rounds == list(range(1, ROUNDS + 1))
        assert db.execute("SELECT status FROM run").fetchone()[0] == "finished"
        metric_rounds = {r[0] for r in db.execute("SELECT round FROM metrics WHERE name='loss'")}
        assert metric_rounds == set(range(1, ROUNDS + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["rounds"] == ROUNDS
        and summary["deployment"]["resumed_after_round"] == resumed_after
    )

    # Assert: resuming changed nothing: the model is the uninterrupted simulation's
    coordinator = Simulation(load_config(config)).coordinator()
    coordinator.run(ROUNDS)
    got = load_file(str(out / "model.safetensors"))
    for name, value in coordinator.global_params.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5)
