"""Compressed uploads and downloads over gRPC: top-k + int8 uploads with error feedback, validated
by the server against the codec the task names, and an int8 model on the way down, give the model
the in-process simulation gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedloom.config import load_config
from fedloom.engines import SequentialEngine
from fedloom.server.coordinator import Coordinator
from fedloom.simulation import Simulation
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy


def _simulated(config: Path) -> tuple[Simulation, Coordinator]:
    """The run of ``config`` in the sequential simulation, to compare a deployment with."""
    sim = Simulation(load_config(config))
    coordinator = sim.coordinator()
    coordinator.engine = SequentialEngine(sim.client)
    return sim, coordinator


def _same_model(tmp_path: Path, coordinator: Coordinator) -> dict[str, np.ndarray]:
    """The deployment's final model, checked against the simulation's."""
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    for name, want in coordinator.global_params.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)
    return got


def test_topk_int8_uploads_with_error_feedback_match_the_simulation(
    tmp_path: Path, certs: Path
) -> None:
    # Prepare: 3 clients, every round, 4 rounds; each upload keeps 5% of the values as int8
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=4,
        server={"min_clients": 3},
        partition={"num_clients": 3},
        transport={
            "upload": [{"topk": 0.05}, "int8"],
            "error_feedback": True,
            "download": ["int8"],
        },
    )
    # Execute
    _, codes = h.demo_federation(tmp_path, certs, config, 3)

    # Assert: every client finished cleanly
    assert codes == [0] * 3
    records = h.records(tmp_path / "out")
    assert [(r["returned"], r["rejected"]) for r in records] == [(3, 0)] * 4
    assert all(r["compression_ratio_up"] > 8 for r in records)
    # the int8 model: one byte a parameter and a float32 scale per 256, to each client each round
    sim_spec = Simulation(load_config(config)).spec
    int8_model = sim_spec.size + 4 * -(-sim_spec.size // 256)
    assert all(r["bytes_down"] == 3 * int8_model for r in records)

    # Assert: the same model as the sequential simulation, error-feedback residuals included
    _, coordinator = _simulated(config)
    history = coordinator.run(4)
    _same_model(tmp_path, coordinator)
    assert [r["bytes_up"] for r in records] == [r["bytes_up"] for r in history]


def test_a_pruned_model_travels_sparse_with_its_mask_once_per_client(
    tmp_path: Path, certs: Path
) -> None:
    # Prepare: 3 clients, 4 rounds, the schedule from 0% at round 2 to 60% at round 3; uploads
    # top-k + int8
    pruning = {"enabled": True, "target_sparsity": 0.6, "start_round": 2, "end_round": 3}
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=4,
        server={"min_clients": 3},
        partition={"num_clients": 3},
        transport={"upload": [{"topk": 0.2}, "int8"], "error_feedback": True},
        pruning=pruning,
    )
    # Execute
    _, codes = h.demo_federation(tmp_path, certs, config, 3)

    # Assert: every round ok, sparsity on schedule, the mask downloaded once per client and mask
    assert codes == [0] * 3
    records = h.records(tmp_path / "out")
    assert [(r["returned"], r["rejected"]) for r in records] == [(3, 0)] * 4
    assert [r["sparsity"] for r in records] == pytest.approx([0, 0, 0.6, 0.6], abs=1e-3)
    sim, coordinator = _simulated(config)
    history = coordinator.run(4)
    kept = int(coordinator.strategy_state["pruning/mask"].sum())
    mask_bytes = -(-sim.spec.size // 8)
    assert records[3]["bytes_down"] == 3 * 4 * kept
    assert records[2]["bytes_down"] == 3 * (4 * kept + mask_bytes)

    # Assert: the model the simulation gives, with the pruned weights exactly zero
    got = _same_model(tmp_path, coordinator)
    assert [r["bytes_up"] for r in records] == [r["bytes_up"] for r in history]
    assert [r["bytes_down"] for r in records] == [r["bytes_down"] for r in history]
    flat = sim.spec.flatten({n: got[n] for n in sim.spec.names})
    assert not flat[coordinator.strategy_state["pruning/mask"] < 0.5].any()


def test_model_deltas_reach_clients_without_downloading_the_base(
    tmp_path: Path, certs: Path
) -> None:
    # Prepare: 3 clients, 3 rounds with federated evaluation (a fit and an evaluation a round,
    # each sent as a top-k + int8 delta against the model the client decoded last)
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=3,
        server={"min_clients": 3},
        partition={"num_clients": 3},
        eval={"federated": True},
        transport={"download": [{"topk": 0.2}, "int8"], "download_delta": True},
    )
    # Execute
    _, codes = h.demo_federation(tmp_path, certs, config, 3)

    # Assert: the bytes and the model of the simulation, where the base is never counted: the
    # deployment clients found it in their caches
    assert codes == [0] * 3
    records = h.records(tmp_path / "out")
    assert [(r["returned"], r["rejected"]) for r in records] == [(3, 0)] * 3
    _, coordinator = _simulated(config)
    history = coordinator.run(3)
    assert [r["bytes_down"] for r in records] == [r["bytes_down"] for r in history]
    _same_model(tmp_path, coordinator)
    assert records[-1]["fed_accuracy_mean"] == pytest.approx(history[-1]["fed_accuracy_mean"])
