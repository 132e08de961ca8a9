"""The server fails visibly, with a reason and a non-zero exit, instead of hanging."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

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
