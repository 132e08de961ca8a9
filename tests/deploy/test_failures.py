"""The server fails visibly, with a reason and a non-zero exit, instead of hanging."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import DeploymentError
from fedloom.server.state import StateStore
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy


def test_tls_is_required_unless_insecure(tmp_path: Path) -> None:
    config = h.write_config(tmp_path / "run.yaml")
    log = tmp_path / "server.log"
    proc = h.fedloom(
        [
            "server",
            "--config",
            str(config),
            "--address",
            f"{h.HOST}:{h.free_port()}",
            "--state",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "o"),
        ],
        log,
    )
    assert h.wait(proc, 60, log) == 2
    assert "--certs DIR is required" in h.read(log)


def test_too_few_clients_fails_after_join_timeout(tmp_path: Path) -> None:
    config = h.write_config(tmp_path / "run.yaml", server={"join_timeout_s": 1.0})
    log = tmp_path / "server.log"
    proc = h.server(config, h.free_port(), None, tmp_path / "s", tmp_path / "o", log)
    assert h.wait(proc, 60, log) == 2
    text = h.read(log)
    assert "WARNING: --insecure" in text
    assert "only 0 of the 1 clients needed" in text


def test_round_without_usable_updates_is_retried_then_fails(tmp_path: Path) -> None:
    config = h.write_config(tmp_path / "run.yaml", server={"round_retries": 1})
    port = h.free_port()
    log = tmp_path / "server.log"
    procs = [h.server(config, port, None, tmp_path / "s", tmp_path / "o", log)]
    try:
        procs.append(
            h.client(
                port,
                "client-0",
                None,
                tmp_path / "c.log",
                ["--app", "tests.deploy.apps:failing_client"],
            )
        )
        code = h.wait(procs[0], 90, log)
    finally:
        h.stop_all(procs)
    text = h.read(log)
    assert code == 2, text
    assert "(attempt 1 of 2)" in text and "(attempt 2 of 2)" in text
    assert "round 1 failed 2 times" in text
    assert "local training crashed (on purpose)" in text
    with sqlite3.connect(tmp_path / "s" / "state.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 2
        assert db.execute("SELECT status FROM run").fetchone()[0] == "failed"


def test_state_store_commits_rounds_and_checkpoints(tmp_path: Path) -> None:
    # Prepare
    store = StateStore(tmp_path)
    info = store.open_run("{}", {"seed": 1})
    assert (info.resumed, info.last_round) == (False, 0)
    assert [store.client_id(n) for n in ("a", "b", "a")] == [0, 1, 0]

    # Execute: three rounds, keeping two checkpoints
    for r in (1, 2, 3):
        params = np.full(4, r, np.float32)
        store.commit_round(
            {"round": r, "status": "ok", "loss": 1.0 / r}, params, {"momentum": params * 2}, keep=2
        )
    store.close()
    again = StateStore(tmp_path)
    info = again.open_run("{}", {"seed": 1})

    # Assert
    assert (info.resumed, info.last_round, info.run_id) == (True, 3, info.run_id)
    params, opt = again.load_checkpoint(3)
    assert params.tolist() == [3.0] * 4 and opt["momentum"].tolist() == [6.0] * 4
    assert [r["round"] for r in again.history()] == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "round-0002.safetensors",
        "round-0003.safetensors",
    ]
    assert again.client_id("b") == 1
    with pytest.raises(DeploymentError, match=r"different config \(sections differ: seed\)"):
        again.open_run("{}", {"seed": 2})
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        loss = db.execute("SELECT value FROM metrics WHERE round=2 AND name='loss'").fetchone()[0]
    assert loss == 0.5
    assert json.loads(json.dumps(again.history()[0]))["loss"] == 1.0
    again.close()
