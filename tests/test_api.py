"""``fedloom.simulate``: a user's own nn.Module and per-client arrays, end to end.

The data are scikit-learn's digits (1797 8x8 images) split into 10 clients of about 150 rows and a
central test set of 300; the model is defined here, not one of fedloom's reference models.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import fedloom
from fedloom.client.torch_client import TorchClient
from fedloom.engines.vectorized import VectorizationFallbackWarning
from fedloom.errors import ConfigError
from fedloom.strategies import FedProx
from fedloom.tracking import read_metrics

NUM_CLIENTS = 10
TRAIN = {"client.epochs": 2, "client.lr": 0.1}

Arrays = tuple[np.ndarray, np.ndarray]


class DigitNet(nn.Module):
    """The user's model: one hidden layer, parameter names of its own."""

    def __init__(self, hidden: int = 32, classes: int = 10, features: int = 64) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, hidden)
        self.scores = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.scores(torch.relu(self.hidden(x)))
        return out


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from more threads, and a busy machine makes them much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[list[Arrays], Arrays]:
    """10 clients' (x, y) and the test set: float64 pixels scaled to [0, 1], int64 labels."""
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:300], order[300:]
    clients = [(x[rows], y[rows]) for rows in np.array_split(train, NUM_CLIENTS)]
    return clients, (x[test], y[test])


def _simulate(digits: tuple[list[Arrays], Arrays], out: Path, **kwargs: Any) -> dict[str, Any]:
    clients, test = digits
    args: dict[str, Any] = dict(
        model_fn=DigitNet, clients=clients, test=test, rounds=3, out_dir=out, quiet=True
    )
    args["config"] = {**TRAIN, **kwargs.pop("config", {})}
    return fedloom.simulate(**{**args, **kwargs})


@pytest.fixture(scope="module")
def vectorized_run(
    digits: tuple[list[Arrays], Arrays], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    """The reference run: the default (vectorized) engine, seed 0; no client may fall back to
    the sequential path."""
    out = tmp_path_factory.mktemp("vectorized")
    with warnings.catch_warnings():
        warnings.simplefilter("error", VectorizationFallbackWarning)
        summary = _simulate(digits, out, config={"engine.name": "vectorized"})
    return summary, out


def _without_timing(out: Path) -> list[dict[str, Any]]:
    rows = read_metrics(out)
    for row in rows:
        row.pop("seconds")
        row.pop("phase_seconds")
    return rows


def test_writes_the_results_folder_and_learns(vectorized_run: tuple[dict[str, Any], Path]) -> None:
    summary, out = vectorized_run
    for name in ("summary.json", "metrics.jsonl", "model.safetensors", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "summary.json").read_text())["final"] == summary["final"]
    assert [r["round"] for r in read_metrics(out)] == [1, 2, 3]
    # Measured: 0.793 after 3 rounds (0.10 is chance); a broken aggregation stays near chance.
    assert summary["final"]["accuracy"] > 0.75
    assert summary["num_clients"] == NUM_CLIENTS
    assert summary["num_parameters"] == 64 * 32 + 32 + 32 * 10 + 10
    assert summary["dataset"] == {
        "name": "arrays",
        "task": "classification",
        "train_examples": 1497,
        "test_examples": 300,
    }
    assert summary["config"]["model"] == {"class": "tests.test_api.DigitNet"}
    assert summary["config"]["client"]["epochs"] == 2
    assert summary["config"]["eval"]["federated"] is False  # a test set was given
    assert "dataset" not in summary["config"] and "partition" not in summary["config"]


def test_same_seed_gives_the_same_metrics(
    digits: tuple[list[Arrays], Arrays],
    vectorized_run: tuple[dict[str, Any], Path],
    tmp_path: Path,
) -> None:
    _, reference = vectorized_run
    _simulate(digits, tmp_path / "again", config={"engine.name": "vectorized"})
    assert _without_timing(tmp_path / "again") == _without_timing(reference)
    _simulate(digits, tmp_path / "seed1", config={"engine.name": "vectorized"}, seed=1)
    assert _without_timing(tmp_path / "seed1") != _without_timing(reference)


def test_sequential_engine_matches_vectorized(
    digits: tuple[list[Arrays], Arrays],
    vectorized_run: tuple[dict[str, Any], Path],
    tmp_path: Path,
) -> None:
    _, reference = vectorized_run
    _simulate(digits, tmp_path, config={"engine.name": "sequential"})
    got, want = _without_timing(tmp_path), _without_timing(reference)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in ("train_loss", "loss"):
            assert g[key] == pytest.approx(w[key], rel=1e-4), key
        # Float-tolerance differences may flip at most an example or two on the boundary.
        assert abs(g["accuracy"] - w["accuracy"]) <= 2 / 300


def test_without_a_test_set_clients_evaluate_on_held_out_rows(
    digits: tuple[list[Arrays], Arrays], tmp_path: Path
) -> None:
    summary = _simulate(digits, tmp_path, test=None, rounds=2)
    assert summary["config"]["eval"]["federated"] is True
    assert "accuracy" not in summary["final"]
    assert summary["final"]["fed_accuracy_mean"] > 0.5
    assert summary["dataset"]["test_examples"] == 0


def test_float_targets_make_a_regression_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=5)
    clients = []
    for _ in range(4):
        x = rng.normal(size=(40, 5))
        clients.append((x, x @ weights + 0.05 * rng.normal(size=40)))
    x_test = rng.normal(size=(100, 5))
    summary = fedloom.simulate(
        model_fn=lambda: nn.Linear(5, 1),
        clients=clients,
        test=(x_test, x_test @ weights),
        rounds=2,
        out_dir=tmp_path,
        config={"client.lr": 0.05, "engine.name": "sequential"},
    )
    assert summary["dataset"]["task"] == "regression"
    assert summary["final"]["r2"] > 0.9
    printed = capsys.readouterr().out
    assert "round 1/2 | train_loss" in printed and "round 2/2 |" in printed
    assert "fedloom run summary" in printed


def test_client_fn_builds_the_users_own_clients(
    digits: tuple[list[Arrays], Arrays], tmp_path: Path
) -> None:
    clients, test = digits
    model = DigitNet()
    built: list[int] = []

    def client_fn(cid: int) -> TorchClient:
        built.append(cid)
        x, y = clients[cid]
        return TorchClient(model, x.astype(np.float32), y, num_classes=10, client_id=cid)

    summary = fedloom.simulate(
        model_fn=DigitNet,
        client_fn=client_fn,
        num_clients=NUM_CLIENTS,
        num_examples=[len(y) for _, y in clients],
        test=test,
        rounds=2,
        out_dir=tmp_path,
        quiet=True,
        config=TRAIN,
    )
    assert set(built) == set(range(NUM_CLIENTS))
    assert summary["dataset"]["name"] == "client_fn"
    assert summary["dataset"]["train_examples"] == 1497
    assert summary["final"]["accuracy"] > 0.5


def test_strategy_by_name_and_by_instance(
    digits: tuple[list[Arrays], Arrays], tmp_path: Path
) -> None:
    named = _simulate(
        digits,
        tmp_path / "named",
        rounds=1,
        strategy="fedprox",
        config={"strategy.proximal_mu": 0.5},
    )
    assert named["config"]["strategy"]["name"] == "fedprox"
    assert named["config"]["strategy"]["proximal_mu"] == 0.5
    own = _simulate(digits, tmp_path / "own", rounds=1, strategy=FedProx(proximal_mu=0.5))
    assert own["config"]["strategy"] == {
        "name": "fedprox",
        "class": "fedloom.strategies.fedprox.FedProx",
    }
    # The same algorithm and settings: the strategy's client_config is empty, so the clients
    # train with config's client.* in both runs.
    assert _without_timing(tmp_path / "own") == _without_timing(tmp_path / "named")


def test_import_fedloom_does_not_import_torch() -> None:
    code = (
        "import sys, fedloom; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert callable(fedloom.simulate) and 'torch' in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# -- input validation: every error names the argument and the fix, before anything runs ---------


def _narrow_net() -> nn.Module:
    return DigitNet(classes=5)


def _input_32() -> nn.Module:
    return DigitNet(features=32)


def _short_y(clients: list[Arrays]) -> list[Arrays]:
    out = list(clients)
    x, y = out[3]
    out[3] = (x, y[:-1])
    return out


def _other_width(clients: list[Arrays]) -> list[Arrays]:
    out = list(clients)
    x, y = out[2]
    out[2] = (x[:, :60], y)
    return out


Case = tuple[dict[str, Any], type[Exception], str]

BAD_INPUTS: dict[str, Callable[[list[Arrays], Arrays], Case]] = {
    "x and y lengths differ": lambda c, t: (
        {"clients": _short_y(c)},
        ValueError,
        "clients[3]: x has 150 examples but y has 149; give one label per example",
    ),
    "no clients": lambda c, t: (
        {"clients": []},
        ValueError,
        "clients is empty: pass one (x, y) pair of arrays per client, "
        "e.g. clients=[(x0, y0), (x1, y1)]",
    ),
    "one array instead of a list of pairs": lambda c, t: (
        {"clients": c[0][0]},
        TypeError,
        "clients must be a list of (x, y) pairs, one per client, got ndarray of shape "
        "(150, 64); split your data first",
    ),
    "a client is not a pair": lambda c, t: (
        {"clients": [c[0], c[1][0]]},
        TypeError,
        "clients[1] must be an (x, y) pair of arrays, got ndarray of shape (150, 64)",
    ),
    "clients with different features": lambda c, t: (
        {"clients": _other_width(c)},
        ValueError,
        "clients[2]: examples have shape (60,), but clients[0]'s have (64,); every client's x "
        "must have the same shape per example",
    ),
    "test set of the wrong feature shape": lambda c, t: (
        {"test": (t[0][:, :63], t[1])},
        ValueError,
        "test: examples have shape (63,), but the clients' have (64,); the test set must have "
        "the clients' features",
    ),
    "model_fn returns no module": lambda c, t: (
        {"model_fn": lambda: "DigitNet"},
        TypeError,
        "model_fn() returned str, not a torch.nn.Module; return the model, "
        "e.g. model_fn=lambda: MyNet()",
    ),
    "model instance instead of a factory": lambda c, t: (
        {"model_fn": DigitNet()},
        TypeError,
        "model_fn must build the model, not be it: pass model_fn=lambda: DigitNet(...) (or the "
        "class DigitNet), not a DigitNet instance",
    ),
    "model input layer does not fit the data": lambda c, t: (
        {"model_fn": _input_32},
        ValueError,
        "the model from model_fn() fails on clients[0]'s examples (a batch of shape (2, 64)): "
        "RuntimeError: ",
    ),
    "fewer model outputs than classes": lambda c, t: (
        {"model_fn": _narrow_net},
        ValueError,
        "clients[0]: labels go up to 9 but the model outputs 5 scores per example; give its "
        "last layer 10 outputs, one per class",
    ),
    "num_classes disagrees with the model": lambda c, t: (
        {"num_classes": 12},
        ValueError,
        "num_classes=12 but the model outputs 10 scores per example; make them agree",
    ),
    "clients and client_fn": lambda c, t: (
        {"client_fn": lambda cid: None, "num_clients": 3},
        ValueError,
        "pass clients=[...] or client_fn=..., not both",
    ),
    "neither clients nor client_fn": lambda c, t: (
        {"clients": None},
        ValueError,
        "no clients: pass clients=[(x0, y0), (x1, y1), ...] (one (x, y) pair of arrays per "
        "client), or client_fn=... with num_clients=N",
    ),
    "client_fn without num_clients": lambda c, t: (
        {"clients": None, "client_fn": lambda cid: None},
        ValueError,
        "client_fn needs num_clients=N (N >= 1), the number of clients it builds (ids 0..N-1); "
        "got None",
    ),
    "dataset key": lambda c, t: (
        {"config": {"dataset.name": "mnist"}},
        ConfigError,
        "config['dataset.name']: dataset.* does not apply to fedloom.simulate: the data are the "
        "arrays you pass (clients=..., test=...)",
    ),
    "partition key": lambda c, t: (
        {"config": {"partition": {"num_clients": 5}}},
        ConfigError,
        "config['partition.num_clients']: partition.* does not apply to fedloom.simulate: your "
        "clients are already split: one (x, y) pair per client",
    ),
    "model key": lambda c, t: (
        {"config": {"model.hidden": [8]}},
        ConfigError,
        "config['model.hidden']: model.* does not apply to fedloom.simulate: the model is what "
        "model_fn builds",
    ),
    "rounds as a config key": lambda c, t: (
        {"config": {"rounds": 5}},
        ConfigError,
        "config['rounds']: pass rounds=... to simulate instead of the config key",
    ),
    "misspelt key, as --set reports it": lambda c, t: (
        {"config": {"clinet.epochs": 2}},
        ConfigError,
        "invalid config:\n  clinet: unknown key (value {'epochs': 2}); check the spelling",
    ),
    "out of range, as --set reports it": lambda c, t: (
        {"config": {"client.epochs": 0}},
        ConfigError,
        "client.epochs: got 0; Input should be greater than or equal to 1",
    ),
    "unknown strategy name": lambda c, t: (
        {"strategy": "fedx"},
        ConfigError,
        "strategy.name: got 'fedx'; allowed: 'fedavg', 'fedsgd', 'fedprox', 'scaffold', 'fednova', "
        "'qffl', 'fedbuff', 'ifca', 'fedper' or 'ditto'",
    ),
    "strategy keys with a strategy instance": lambda c, t: (
        {"strategy": FedProx(), "config": {"strategy.proximal_mu": 0.5}},
        ConfigError,
        "config['strategy.proximal_mu']: strategy.* keys set up a strategy given by name, but "
        "strategy= is a FedProx instance; set proximal_mu on the instance instead",
    ),
    "strategy of the wrong type": lambda c, t: (
        {"strategy": 3},
        TypeError,
        "strategy must be a name ('fedavg', 'fedsgd', 'fedprox', 'scaffold', 'fednova', 'qffl', "
        "'fedbuff', 'ifca', 'fedper', 'ditto') or a fedloom.strategies.Strategy instance, got int",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_the_fix(
    case: str, digits: tuple[list[Arrays], Arrays], tmp_path: Path
) -> None:
    clients, test = digits
    changes, error, message = BAD_INPUTS[case](clients, test)
    args: dict[str, Any] = {
        "model_fn": DigitNet,
        "clients": clients,
        "test": test,
        "rounds": 1,
        "out_dir": tmp_path / "out",
        "quiet": True,
        **changes,
    }
    with pytest.raises(error, match=re.escape(message)):
        fedloom.simulate(**args)
    assert not (tmp_path / "out").exists()  # refused before anything ran
