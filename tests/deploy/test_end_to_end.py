"""A real deployment on 127.0.0.1 gives the model an in-process simulation gives."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedloom.config import load_config
from fedloom.simulation import Simulation
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy


def test_tls_server_and_five_clients_match_the_simulation(tmp_path: Path, certs: Path) -> None:
    # Prepare
    config = h.write_config(
        tmp_path / "run.yaml", rounds=5, server={"min_clients": 5}, partition={"num_clients": 5}
    )
    # Execute
    server_log, codes = h.demo_federation(tmp_path, certs, config, 5)

    # Assert: every client finished cleanly, the run is complete and recorded
    assert codes == [0] * 5
    log = h.read(server_log)
    assert "TLS, mtls" in log
    for r in range(1, 6):
        assert f"round {r}/5 | selected 5 | returned 5 | rejected 0" in log
    records = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rounds"] == 5 and summary["failed_rounds"] == 0
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM rounds WHERE status='ok'").fetchone()[0] == 5
        assert db.execute("SELECT COUNT(*) FROM clients").fetchone()[0] == 5

    # Assert: the same model as the in-process sequential simulation of this config and seed
    sim = Simulation(load_config(config))
    coordinator = sim.coordinator()
    history = coordinator.run(5)
    expected = coordinator.global_params
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5)
    assert abs(records[-1]["accuracy"] - history[-1]["accuracy"]) < 1e-6
