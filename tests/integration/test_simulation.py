"""Whole simulations on real data: determinism, and the qualitative result of McMahan et al."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedloom.config import load_config
from fedloom.simulation import Simulation, run


def _strip_timing(path: Path) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


def test_same_seed_and_config_give_identical_metrics(tmp_path: Path) -> None:
    overrides = [
        "rounds=3",
        "partition.kind=dirichlet",
        "partition.num_clients=20",
        "strategy.fraction_fit=0.5",
        "client.epochs=1",
        "eval.federated=true",
    ]
    for name in ("a", "b"):
        run(load_config(None, overrides), tmp_path / name, quiet=True)
    a = _strip_timing(tmp_path / "a" / "metrics.jsonl")
    assert a == _strip_timing(tmp_path / "b" / "metrics.jsonl")
    assert "fed_accuracy_worst10" in a[-1]
    run(load_config(None, [*overrides, "seed=1"]), tmp_path / "c", quiet=True)
    assert a != _strip_timing(tmp_path / "c" / "metrics.jsonl")


def _rounds_to_reach(overrides: list[str], target: float, max_rounds: int) -> int | None:
    cfg = load_config(None, [f"rounds={max_rounds}", "partition.num_clients=20", *overrides])
    coordinator = Simulation(cfg).coordinator()
    for r in range(1, max_rounds + 1):
        if coordinator.run_round(r)["accuracy"] >= target:
            return r
    return None


def test_fedavg_with_several_epochs_needs_fewer_rounds_than_fedsgd() -> None:
    """McMahan et al. 2017, Table 2: more local computation per round cuts the rounds needed."""
    fedavg = _rounds_to_reach(["client.epochs=5", "client.batch_size=10"], 0.85, 20)
    fedsgd = _rounds_to_reach(["strategy.name=fedsgd", "strategy.server_lr=0.5"], 0.85, 20)
    assert fedavg is not None and fedavg <= 5
    assert fedsgd is None or fedsgd > 2 * fedavg


def test_clients_without_data_are_skipped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    sim = Simulation(load_config(None, ["rounds=1", "partition.num_clients=10"]))
    sim.clients[3].train = sim.clients[3].train[:0]
    sim.clients[7].train = sim.clients[7].train[:0]
    coordinator = sim.coordinator()
    assert "2 clients have no training data and are skipped: 3, 7" in caplog.text
    record = coordinator.run_round(1)
    assert (record["selected"], record["returned"]) == (8, 8)


def test_csv_with_natural_partition_runs_one_client_per_group(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["hospital,age,dose,target"]
    for i in range(90):
        age, dose = rng.normal(50, 10), rng.normal(1, 0.3)
        rows.append(f"h{i % 3},{age:.2f},{dose:.3f},{int(age + 20 * dose > 70)}")
    path = tmp_path / "patients.csv"
    path.write_text("\n".join(rows) + "\n")
    cfg = load_config(
        None,
        [
            "rounds=2",
            "dataset.name=csv",
            f"dataset.path={path}",
            "dataset.group_column=hospital",
            "partition.kind=natural",
            "model.name=logistic",
        ],
    )
    summary = run(cfg, tmp_path / "out", quiet=True)
    assert summary["num_clients"] == 3
    assert summary["dataset"]["task"] == "classification"
    assert "auc" in summary["final"]
