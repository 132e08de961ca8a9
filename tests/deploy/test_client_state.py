"""A deployment client that is killed and restarted with ``--state DIR`` loses nothing: SCAFFOLD
over gRPC ends with the uninterrupted simulation's model. Without ``--state`` the same kill
changes the model (the restarted client starts again from a zero control variate), which shows
the first test can fail.

The victim is killed with SIGKILL while it trains round 3 (it finished round 2, so its state file
holds the versions of rounds 1 and 2). ``strategy.min_fit_clients`` is the number of clients, so
the round's first attempt fails without the victim and the server retries it once the victim is
back: the other clients run round 3 again from their round-2 state (the store keeps the version
before the newest), the victim runs it from the round-2 state it loaded.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedloom.client.state import ClientStateStore
from fedloom.config import load_config
from fedloom.simulation import Simulation
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

ROUNDS = 4
CLIENTS = 3
VICTIM = CLIENTS - 1  # killed in round 3
DELAY = 2.0  # the victim's round-3 fit takes this much longer, so the kill lands in it
APP = ["--app", "tests.deploy.apps:slow_client"]


def _config(tmp_path: Path) -> Path:
    return h.write_config(
        tmp_path / "run.yaml",
        rounds=ROUNDS,
        partition={"num_clients": CLIENTS},
        strategy={"name": "scaffold", "min_fit_clients": CLIENTS},
        engine={"name": "sequential"},
        server={"min_clients": CLIENTS},
    )


def _client(
    port: int, i: int, certs: Path, log: Path, state: Path | None, delay: float
) -> subprocess.Popen[bytes]:
    env = {
        "FEDLOOM_TEST_PARTITION": f"{i}/{CLIENTS}",
        "FEDLOOM_TEST_FIT_DELAY": str(delay),
        "FEDLOOM_TEST_DELAY_ROUNDS": "3",
    }
    extra = ["--state", str(state)] if state is not None else []
    return h.client(port, f"client-{i}", certs, log, APP, extra=extra, env=env)


def _kill_victim_in_round_3(tmp_path: Path, certs: Path, with_state: bool) -> dict[str, Any]:
    """Run the deployment, killing and restarting the victim; returns what the test checks."""
    config = _config(tmp_path)
    port = h.free_port()
    state, out = tmp_path / "server-state", tmp_path / "out"
    server_log = tmp_path / "server.log"
    logs = [tmp_path / f"c{i}.log" for i in range(CLIENTS)]
    restart_log = tmp_path / f"c{VICTIM}-restarted.log"
    folders = [tmp_path / f"client-state-{i}" if with_state else None for i in range(CLIENTS)]
    procs = [h.server(config, port, certs, state, out, server_log)]
    try:
        h.listening(server_log, procs[0])
        for i in range(CLIENTS):
            delay = DELAY if i == VICTIM else 0.0
            procs.append(_client(port, i, certs, logs[i], folders[i], delay))
        victim = procs[VICTIM + 1]
        h.wait_for_line(logs[VICTIM], "fit round 3 started", 90, victim)

        # Execute: kill -9 while the victim trains round 3, then start it again
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert f"round 3/{ROUNDS} |" not in h.read(server_log), "the kill came too late"
        procs.append(_client(port, VICTIM, certs, restart_log, folders[VICTIM], 0.0))
        assert h.wait(procs[0], 90, server_log) == 0, h.read(server_log)
        # the victim's first process was killed: its place is taken by the restarted one
        done = [(procs[i + 1], logs[i]) for i in range(CLIENTS) if i != VICTIM]
        codes = [h.wait(p, 30, log) for p, log in [*done, (procs[-1], restart_log)]]
    finally:
        h.stop_all(procs)

    assert codes == [0] * CLIENTS, [h.read(log) for log in [*logs, restart_log]]
    records = h.records(out)
    assert [(r["round"], r["status"], r["returned"]) for r in records] == [
        (r, "ok", CLIENTS) for r in range(1, ROUNDS + 1)
    ]
    with sqlite3.connect(state / "state.sqlite3") as db:
        run_id = str(db.execute("SELECT run_id FROM run").fetchone()[0])
        failed = db.execute("SELECT DISTINCT round FROM attempts").fetchall()
        ids = dict(db.execute("SELECT name, client_id FROM clients").fetchall())
    assert failed == [(3,)], h.read(server_log)  # round 3 ran again once the victim was back
    return {
        "config": config,
        "model": load_file(str(out / "model.safetensors")),
        "records": records,
        "restart_log": h.read(restart_log),
        "folders": folders,
        "run_id": run_id,
        "ids": ids,  # the server's client id of each client name
    }


def _simulation(config: Path) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The uninterrupted run: the same config, in one process, client by client."""
    coordinator = Simulation(load_config(config)).coordinator()
    history = coordinator.run(ROUNDS)
    return coordinator.global_params, history


def test_a_client_killed_after_round_2_restarts_from_its_state_file_to_the_uninterrupted_model(
    tmp_path: Path, certs: Path
) -> None:
    got = _kill_victim_in_round_3(tmp_path, certs, with_state=True)

    # Assert: the restarted victim took over its round-1 and round-2 state
    victim_id = got["ids"][f"client-{VICTIM}"]
    assert f"client {victim_id}, versions of rounds 1, 2 (" in got["restart_log"], got[
        "restart_log"
    ]

    # Assert: the model and the training losses are the uninterrupted simulation's
    expected, history = _simulation(got["config"])
    assert sorted(got["model"]) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got["model"][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    for got_record, sim_record in zip(got["records"], history, strict=True):
        assert got_record["train_loss"] == pytest.approx(sim_record["train_loss"], rel=1e-5)

    # Assert: every client's file holds its last two versions, for this run and this client
    for i, folder in enumerate(got["folders"]):
        store, meta = ClientStateStore.load_with_metadata(folder / "client-state.safetensors")
        assert meta == {"run_id": got["run_id"], "client_name": f"client-{i}"}
        cid = got["ids"][f"client-{i}"]
        assert store.client_ids() == [cid] and store.rounds(cid) == [ROUNDS - 1, ROUNDS]
        assert store.keep_previous
        assert any(np.abs(v).max() > 0 for v in store.get(cid, ROUNDS + 1).values())


def test_without_state_the_same_kill_changes_the_model(tmp_path: Path, certs: Path) -> None:
    got = _kill_victim_in_round_3(tmp_path, certs, with_state=False)

    assert "loaded client state" not in got["restart_log"]
    expected, _ = _simulation(got["config"])
    gap = max(float(np.abs(got["model"][n] - v).max()) for n, v in expected.items())
    assert gap > 1e-3, "the restarted client's zero control variate left no trace"


def test_a_state_file_of_another_run_or_client_is_refused(tmp_path: Path, certs: Path) -> None:
    # Prepare: client-0's state file from a run this server does not run
    folder = tmp_path / "client-state"
    folder.mkdir()
    old = ClientStateStore(keep_previous=True)
    old.put(0, 1, {"control/w": np.ones(3, np.float32)})
    old.save(
        folder / "client-state.safetensors", {"run_id": "0ld0run0000", "client_name": "client-0"}
    )
    config = _config(tmp_path)
    port = h.free_port()
    server_log, logs = tmp_path / "server.log", [tmp_path / f"c{i}.log" for i in range(2)]
    procs = [h.server(config, port, certs, tmp_path / "state", tmp_path / "out", server_log)]
    try:
        h.listening(server_log, procs[0])

        # Execute: client-0 with its old file, client-1 with client-0's folder
        for i in range(2):
            procs.append(_client(port, i, certs, logs[i], folder, 0.0))
        codes = [h.wait(p, 60, logs[i]) for i, p in enumerate(procs[1:])]
    finally:
        h.stop_all(procs)

    # Assert: both exit as refused clients do, saying why and what to do; the file is kept
    assert codes == [2, 2], [h.read(log) for log in logs]
    first, second = h.read(logs[0]), h.read(logs[1])
    assert "belongs to run 0ld0run0000" in first and "use a new --state folder" in first, first
    assert "belongs to client 'client-0', not 'client-1'" in second, second
    assert "delete the file" in second
    assert ClientStateStore.load(folder / "client-state.safetensors").rounds(0) == [1]
