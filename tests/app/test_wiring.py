"""One builder for every entry point: ``fedloom server`` builds only the server side (no
``Simulation``, no partition of simulated clients), and ``fedloom run``, ``fedloom.simulate`` and
``serve`` reach their coordinator through the one ``make_coordinator``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
from torch import nn

import fedloom
import fedloom.app.federation
import fedloom.app.supervised
import fedloom.data.federated
from fedloom.app.user_code import server_federation
from fedloom.cli.main import main
from fedloom.config import load_config
from fedloom.server.deploy import ServerOptions, serve
from fedloom.simulation import Simulation, run


def _refuse(what: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError(f"the server side built {what}")

    return refuse


def _no_simulated_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Simulation, "__init__", _refuse("a Simulation"))
    monkeypatch.setattr(fedloom.app.supervised, "load_clients", _refuse("clients"))
    monkeypatch.setattr(fedloom.data.federated, "partition_clients", _refuse("a partition"))
    monkeypatch.setattr(fedloom.data.federated, "partition", _refuse("a partition"))


def test_the_server_builds_its_side_without_simulating_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: what a simulation of the same config starts from
    cfg = load_config(None, ["seed=3"])
    sim = Simulation(cfg)
    want = sim.central_eval(sim.spec.unflatten(sim.init_params))
    _no_simulated_clients(monkeypatch)

    # Execute
    federation = server_federation(cfg)

    # Assert: the simulation's model, initial params and central evaluation, and no clients
    assert federation.client_fn is None and federation.population.num_examples == {}
    assert federation.spec == sim.spec
    np.testing.assert_array_equal(federation.init_params, sim.init_params)
    assert federation.central_eval is not None
    assert federation.central_eval(sim.spec.unflatten(sim.init_params)) == want
    assert federation.source == "mlp from the config"
    assert federation.eval_source == "the digits test split"


def test_fedloom_server_never_builds_a_simulation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_simulated_clients(monkeypatch)

    code = main(
        [
            "server",
            "--insecure",
            "--quiet",
            "--address",
            "127.0.0.1:0",
            "--state",
            str(tmp_path / "state"),
            "--out",
            str(tmp_path / "out"),
            "--set",
            "server.join_timeout_s=0.2",
        ]
    )

    # it built its side and served, and stopped for want of clients, not for a Simulation
    err = capsys.readouterr().err
    assert code == 2
    assert "DeploymentError: only 0 of the 1 clients needed" in err
    assert "AssertionError" not in err


class _Reached(Exception):
    """Raised by the recording ``make_coordinator``: the caller got there."""


def _recording(calls: list[dict[str, Any]]) -> Any:
    def make_coordinator(cfg: object, **kwargs: Any) -> NoReturn:
        calls.append(kwargs)
        raise _Reached

    return make_coordinator


def test_run_simulate_and_serve_reach_the_one_make_coordinator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(fedloom.app.federation, "make_coordinator", _recording(calls))
    cfg = load_config(None, ["rounds=1", "partition.num_clients=2"])
    x = np.zeros((4, 3), dtype=np.float32)
    y = np.array([0, 1, 0, 1])
    opts = ServerOptions(
        address="127.0.0.1:0", state=tmp_path / "state", out=tmp_path / "out", insecure=True
    )

    # Execute
    with pytest.raises(_Reached):
        run(cfg, tmp_path / "run", quiet=True)
    with pytest.raises(_Reached):
        fedloom.simulate(lambda: nn.Linear(3, 2), [(x, y)], out_dir=tmp_path / "s")
    with pytest.raises(_Reached):
        serve(cfg, opts, lambda: server_federation(cfg))

    # Assert: the simulations on their clients, the server on its remote engine
    assert [(c["client_fn"] is None, c["engine"] is None) for c in calls] == [
        (False, True),
        (False, True),
        (True, False),
    ]
    assert type(calls[2]["engine"]).__name__ == "_CountedEngine"


def _run(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    args = ["run", "--quiet", "--out", str(tmp_path / "out")]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0
    summary: dict[str, Any] = json.loads((tmp_path / "out" / "summary.json").read_text())
    return summary


def test_shakespeare_runs_with_no_other_flag_on_the_char_lstm(tmp_path: Path) -> None:
    # the dataset's own flag and the test's size; no model, partition or engine setting
    summary = _run(
        tmp_path,
        "dataset.name=shakespeare",
        "dataset.max_clients=2",
        "dataset.stride=64",
        "partition.num_clients=2",
        "rounds=1",
    )

    assert summary["config"]["model"]["name"] == "char_lstm"
    assert summary["rounds"] == 1 and summary["failed_rounds"] == 0
    assert np.isfinite(summary["final"]["perplexity"]) and summary["final"]["perplexity"] > 1


def test_movielens_runs_with_no_other_flag_on_matrix_factorisation(tmp_path: Path) -> None:
    summary = _run(tmp_path, "dataset.name=movielens", "dataset.max_clients=5", "rounds=1")

    assert summary["config"]["model"]["name"] == "mf"
    assert summary["config"]["partition"]["kind"] == "natural"
    assert summary["config"]["engine"]["name"] == "sequential"
    assert summary["num_clients"] == 5 and summary["failed_rounds"] == 0
    assert np.isfinite(summary["final"]["fed_rmse"])
