"""SCAFFOLD over gRPC survives a server crash: the server restores its control variate from the
checkpoint, the clients keep theirs in memory, and the run ends with the uninterrupted
simulation's model.

The kill lands after two clients have trained round 3 (their client state for round 3 is stored)
and before the third has: the restarted server runs round 3 again, and those two clients must
start it from their round-2 state (the client state store keeps versions by round), or the
final model would differ from the simulation's.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedloom.config import load_config
from fedloom.simulation import Simulation
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

ROUNDS = 4
CLIENTS = 3
SLOW = CLIENTS - 1  # this client takes SLOW_DELAY s longer in round 3, so the kill lands in it
SLOW_DELAY = 2.5


def test_scaffold_server_killed_in_round_3_resumes_to_the_uninterrupted_model(
    tmp_path: Path, certs: Path
) -> None:
    # Prepare: the simulation this deployment must reproduce is the same config, sequentially
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=ROUNDS,
        partition={"num_clients": CLIENTS},
        strategy={"name": "scaffold"},
        engine={"name": "sequential"},
        server={"min_clients": CLIENTS},
    )
    port = h.free_port()
    state, out = tmp_path / "state", tmp_path / "out"
    first_log, second_log = tmp_path / "server-1.log", tmp_path / "server-2.log"
    logs = [tmp_path / f"c{i}.log" for i in range(CLIENTS)]
    procs = [h.server(config, port, certs, state, out, first_log)]
    try:
        h.listening(first_log, procs[0])
        for i in range(CLIENTS):
            delay = SLOW_DELAY if i == SLOW else 0.0
            procs.append(h.slow_client(port, i, CLIENTS, certs, logs[i], delay, rounds=[3]))
        h.wait_for_line(first_log, f"round 2/{ROUNDS} |", 90, procs[0])
        for i in range(CLIENTS):
            if i != SLOW:
                h.wait_for_line(logs[i], "fit round 3 finished", 30, procs[i + 1])
        time.sleep(0.3)  # their round-3 state is stored and their uploads are on the way

        # Execute: kill -9 while the slow client is still in round 3, then restart
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        assert f"round 3/{ROUNDS} |" not in h.read(first_log), "the kill came too late"
        procs.append(h.server(config, port, certs, state, out, second_log))
        assert h.wait(procs[-1], 120, second_log) == 0, h.read(second_log)
        codes = [h.wait(p, 30, logs[i]) for i, p in enumerate(procs[1 : CLIENTS + 1])]
    finally:
        h.stop_all(procs)

    # Assert: the second server resumed after round 2 and finished; the clients stayed
    second = h.read(second_log)
    assert "resuming run" in second and "after round 2" in second, second
    assert codes == [0] * CLIENTS
    records = h.records(out)
    assert [(r["round"], r["status"], r["returned"]) for r in records] == [
        (r, "ok", CLIENTS) for r in range(1, ROUNDS + 1)
    ]
    with sqlite3.connect(state / "state.sqlite3") as db:
        assert db.execute("SELECT status FROM run").fetchone()[0] == "finished"

    # Assert: the model and the server control variate are the uninterrupted simulation's
    coordinator = Simulation(load_config(config)).coordinator()
    history = coordinator.run(ROUNDS)
    got = load_file(str(out / "model.safetensors"))
    expected = coordinator.global_params
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    checkpoint = load_file(str(state / "checkpoints" / f"round-{ROUNDS:04d}.safetensors"))
    assert np.abs(checkpoint["strategy.control"]).max() > 0
    np.testing.assert_allclose(
        checkpoint["strategy.control"],
        coordinator.strategy_state["control"],
        rtol=1e-5,
        atol=1e-6,
    )
    for got_record, sim_record in zip(records, history, strict=True):
        assert got_record["train_loss"] == pytest.approx(sim_record["train_loss"], rel=1e-5)
        assert got_record["accuracy"] == pytest.approx(sim_record["accuracy"], abs=1e-9)
