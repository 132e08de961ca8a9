"""Whole simulations on real data: determinism, the qualitative result of McMahan et al., and
that ``fedloom run``, ``fedloom.simulate`` and a demo client see the same clients."""

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

import fedloom
from fedloom.config import load_config
from fedloom.core.task import Blobs, Result, Task
from fedloom.data.federated import load_clients, local_arrays
from fedloom.errors import ConfigError
from fedloom.simulation import Simulation, run, run_recorded


def _strip_timing(path: Path) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
        row.pop("phase_seconds")
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


def test_demo_client_arrays_are_the_simulations_clients() -> None:
    """``load_clients`` + ``local_arrays`` (what a deployment's demo client holds) give exactly the
    rows a simulation of the same config gives its client."""
    cfg = load_config(
        None, ["partition.kind=dirichlet", "partition.num_clients=8", "eval.federated=true"]
    )
    sim = Simulation(cfg)
    dataset, clients = load_clients(cfg)
    for cid in (0, 5, 7):
        arrays, client = local_arrays(dataset, clients[cid]), sim.client(cid)
        assert arrays.x_test is not None and client.x_test is not None
        np.testing.assert_array_equal(arrays.x_train, client.x_train)
        np.testing.assert_array_equal(arrays.y_train, client.y_train)
        np.testing.assert_array_equal(arrays.x_test, client.x_test)


def test_simulate_on_a_runs_own_data_and_model_reproduces_the_run(tmp_path: Path) -> None:
    """``fedloom.simulate`` wires the same engine, strategy, seeds and evaluation as ``fedloom run``:
    given the run's clients' arrays, test split and model, it writes the same metrics."""
    overrides = ["rounds=2", "partition.kind=dirichlet", "partition.num_clients=10"]
    overrides += ["client.epochs=1", "strategy.fraction_fit=0.5", "strategy.server_momentum=0.5"]
    cfg = load_config(None, overrides)
    run(cfg, tmp_path / "run", quiet=True)
    sim = Simulation(cfg)
    ds = sim.dataset
    summary = fedloom.simulate(
        sim.new_model,
        [(ds.x_train[c.train], ds.y_train[c.train]) for c in sim.clients],
        test=(ds.x_test, ds.y_test),
        rounds=2,
        config={
            "client.epochs": 1,
            "strategy.fraction_fit": 0.5,
            "strategy.server_momentum": 0.5,
        },
        out_dir=tmp_path / "simulate",
        quiet=True,
    )
    assert _strip_timing(tmp_path / "simulate" / "metrics.jsonl") == _strip_timing(
        tmp_path / "run" / "metrics.jsonl"
    )
    assert summary["num_parameters"] == sim.spec.size


class _FailingEngine:
    """Raises in its first run; records that it was closed."""

    name = "failing"

    def __init__(self) -> None:
        self.closed = False

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        raise RuntimeError("the cluster went away")

    def close(self) -> None:
        self.closed = True


def test_the_driver_closes_the_engine_when_a_round_raises(tmp_path: Path) -> None:
    coordinator = Simulation(load_config(None, ["partition.num_clients=4"])).coordinator()
    engine = _FailingEngine()
    coordinator.engine = engine
    with pytest.raises(RuntimeError, match="the cluster went away"):
        run_recorded(coordinator, 2, tmp_path, quiet=True, summary_of=lambda h, w: {}, started=0.0)
    assert engine.closed


def test_a_refused_strategy_setting_leaves_no_results_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="applies to fedsgd only"):
        run(load_config(None, ["strategy.aggregation=sum"]), tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
