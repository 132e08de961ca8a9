"""A deployment of the user's own code: ``fedloom server --model`` (the server loads no dataset),
``--eval-data``, and ``--strategy`` with a protocol of two stages, over gRPC."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fedloom.app import Federation
from fedloom.app.user_code import build_strategy, server_federation
from fedloom.client.torch_client import evaluate_model, get_params, set_params
from fedloom.config import Config, load_config
from fedloom.core.codec import get_codec
from fedloom.core.params import ParamSpec
from fedloom.data import load_dataset
from fedloom.engines import SequentialEngine
from fedloom.errors import ConfigError, DeploymentError
from fedloom.server.coordinator import Coordinator, Population
from fedloom.server.deploy import ServerOptions
from fedloom.strategies import Strategy
from tests import apps
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

MODEL = "tests.apps:make_model"
CLIENT_APP = "tests.apps:make_client"


def _digits_test_split(path: Path, cfg: Config) -> Path:
    ds = load_dataset("digits", test_fraction=cfg.dataset.test_fraction, seed=cfg.seed)
    np.savez(path, x=ds.x_test, y=ds.y_test)
    return path


def _deploy(
    tmp_path: Path, config: Path, clients: int, server_args: list[str], certs: Path | None = None
) -> str:
    """Run ``fedloom server`` with ``server_args`` and ``clients`` app clients to the end; returns
    the server's log."""
    port = h.free_port()
    log = tmp_path / "server.log"
    procs = [h.server(config, port, certs, tmp_path / "state", tmp_path / "out", log, server_args)]
    logs = [tmp_path / f"c{i}.log" for i in range(clients)]
    try:
        h.listening(log, procs[0])
        for i in range(clients):
            procs.append(h.app_client(port, i, clients, certs, logs[i], CLIENT_APP))
        assert h.wait(procs[0], 120, log) == 0, h.read(log)
        codes = [h.wait(p, 30, logs[i]) for i, p in enumerate(procs[1:])]
    finally:
        h.stop_all(procs)
    assert codes == [0] * clients, [h.read(x) for x in logs]
    return h.read(log)


def test_user_model_runs_without_a_dataset_on_the_server(tmp_path: Path, certs: Path) -> None:
    # Prepare: the config names MNIST in a folder that does not exist; loading it would fail
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=2,
        dataset={"name": "mnist", "data_dir": str(tmp_path / "no-such-folder")},
        partition={"num_clients": 2},
        server={"min_clients": 2},
    )
    cfg = load_config(config)
    eval_data = _digits_test_split(tmp_path / "eval.npz", cfg)

    # Execute: without --model the server needs the dataset, and says so
    control_log = tmp_path / "control.log"
    control = h.server(
        config, h.free_port(), certs, tmp_path / "control-state", tmp_path / "o", control_log
    )
    assert h.wait(control, 60, control_log) == 2
    assert "MNIST not found" in h.read(control_log)
    # Execute: with --model it loads none
    log = _deploy(tmp_path, config, 2, ["--model", MODEL, "--eval-data", str(eval_data)], certs)

    # Assert: it ran to the end, trained the user's model and evaluated it on --eval-data
    assert "MNIST not found" not in log
    assert f"model: {MODEL}" in log and f"central evaluation: {eval_data}" in log
    records = h.records(tmp_path / "out")
    assert [(r["round"], r["status"], r["returned"]) for r in records] == [
        (1, "ok", 2),
        (2, "ok", 2),
    ]
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(got) == ["hidden.bias", "hidden.weight", "out.bias", "out.weight"]
    model = apps.make_model()
    set_params(model, got)
    ds = load_dataset("digits", test_fraction=cfg.dataset.test_fraction, seed=cfg.seed)
    local = evaluate_model(model, ds.x_test, ds.y_test, task="classification", num_classes=10)
    assert records[-1]["accuracy"] == pytest.approx(local["accuracy"], abs=1e-12)
    assert records[-1]["accuracy"] > 0.5
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_clients"] == 2 and summary["num_parameters"] == 64 * 24 + 24 + 24 * 10 + 10
    assert summary["dataset"] == {
        "eval_data": str(eval_data),
        "task": "classification",
        "test_examples": len(ds.y_test),
        "num_classes": 10,
    }


def test_two_stage_strategy_over_grpc_matches_the_simulation(tmp_path: Path) -> None:
    # Prepare
    rounds, clients = 2, 3
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=rounds,
        partition={"num_clients": clients},
        server={"min_clients": clients},
    )
    cfg = load_config(config)

    # Execute: the deployment (plaintext: the transport's security is tested elsewhere)
    log = _deploy(
        tmp_path, config, clients, ["--model", MODEL, "--strategy", "tests.apps:two_stage_strategy"]
    )
    # Execute: the same protocol, model and partitions in process, sequentially
    torch.manual_seed(cfg.seed)  # as the server does before calling the --model factory
    init = get_params(apps.make_model())
    spec = ParamSpec.of(init)
    local = {i: apps.digits_client(cfg, i, clients) for i in range(clients)}
    coordinator = Coordinator(
        strategy=apps.two_stage_strategy(cfg),
        engine=SequentialEngine(local.__getitem__),
        spec=spec,
        params=spec.flatten(init),
        population=Population({i: c.num_examples for i, c in local.items()}),
        seed=cfg.seed,
        codec=get_codec(cfg.transport.codec),
    )
    history = coordinator.run(rounds)

    # Assert: both rounds ran both stages on every client, as in the simulation
    assert "central evaluation: off" in log
    records = h.records(tmp_path / "out")
    counts = ("round", "status", "selected", "returned", "rejected", "failed")
    assert [[r[k] for k in counts] for r in records] == [[r[k] for k in counts] for r in history]
    assert [r["selected"] for r in records] == [2 * clients] * rounds
    assert all(r["status"] == "ok" for r in records)
    assert "accuracy" not in records[-1]  # no eval data on the server
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    for name, value in coordinator.global_params.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    checkpoint = load_file(str(tmp_path / "state" / "checkpoints" / "round-0002.safetensors"))
    np.testing.assert_allclose(
        checkpoint["strategy.clip_bound"], coordinator.strategy_state["clip_bound"], rtol=1e-6
    )


# -- the factories and --eval-data, without a server --------------------------------------------


def _opts(tmp_path: Path, model: str, eval_data: Path | None = None) -> ServerOptions:
    return ServerOptions(address="", state=tmp_path, out=tmp_path, model=model, eval_data=eval_data)


def test_model_factory_builds_the_same_model_as_the_user_gets(tmp_path: Path) -> None:
    cfg = load_config(None, ["seed=3", "dataset.name=mnist", "dataset.data_dir=/no/such/dir"])
    model = _build(cfg, _opts(tmp_path, model=MODEL))
    torch.manual_seed(3)
    expected = get_params(apps.make_model())
    assert model.spec == ParamSpec.of(expected)
    np.testing.assert_array_equal(model.init_params, model.spec.flatten(expected))
    assert model.central_eval is None and model.data == {}


def test_eval_data_gives_the_simulation_metrics_for_classification_and_regression(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(None, ["model.name=mlp"])
    eval_data = _digits_test_split(tmp_path / "digits.npz", cfg)
    model = _build(cfg, _opts(tmp_path, model=MODEL, eval_data=eval_data))
    assert model.central_eval is not None
    params = model.spec.unflatten(model.init_params)
    metrics = model.central_eval(params)
    reference = apps.make_model()
    set_params(reference, params)
    with np.load(eval_data) as data:
        expected = evaluate_model(
            reference, data["x"], data["y"], task="classification", num_classes=10
        )
    assert metrics["accuracy"] == expected["accuracy"] and metrics["loss"] == expected["loss"]

    # regression: float targets and a model with one output
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "reg.npz", x=rng.normal(size=(20, 3)), y=rng.normal(size=20))
    module = "fedloom_test_regression_model"
    (tmp_path / f"{module}.py").write_text(
        "import torch\n\ndef make():\n    return torch.nn.Linear(3, 1)\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    reg = _build(cfg, _opts(tmp_path, model=f"{module}:make", eval_data=tmp_path / "reg.npz"))
    assert reg.central_eval is not None
    assert reg.data["task"] == "regression"
    assert {"loss", "rmse", "mae"} <= set(reg.central_eval(reg.spec.unflatten(reg.init_params)))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 64))}, "has arrays ['x'], no y"),
        ({"x": np.zeros((4, 64)), "y": np.array([0, 1, 2, 10])}, "but the model has 10 outputs"),
        ({"x": np.zeros((4, 64)), "y": np.zeros(4)}, "the model has 10 outputs, not 1"),
        ({"x": np.zeros((4, 5)), "y": np.zeros(4, int)}, "the model cannot take x of shape (5,)"),
        ({"x": np.zeros((4, 64)), "y": np.zeros(3, int)}, "x must be (n, *input_shape) and y (n,)"),
    ],
)
def test_eval_data_that_does_not_fit_is_refused_with_the_reason(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(DeploymentError) as info:
        _build(load_config(), _opts(tmp_path, model=MODEL, eval_data=path))
    assert message in str(info.value)


def test_eval_data_must_be_an_npz_archive(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros(3))
    for path, message in [
        (tmp_path / "missing.npz", "no such file"),
        (tmp_path / "x.npy", "is one array, not an .npz archive"),
    ]:
        with pytest.raises(DeploymentError, match=r"numpy\.savez") as info:
            _build(load_config(), _opts(tmp_path, model=MODEL, eval_data=path))
        assert message in str(info.value)


def test_eval_data_conflicts_with_central_eval_off(tmp_path: Path) -> None:
    cfg = load_config(None, ["server.central_eval=false"])
    with pytest.raises(ConfigError, match=r"server\.central_eval is false"):
        _build(cfg, _opts(tmp_path, model=MODEL, eval_data=tmp_path / "e.npz"))


def test_strategy_factory_takes_the_config_or_nothing_and_must_return_a_strategy() -> None:
    cfg = load_config(None, ["client.epochs=3", "client.lr=0.05", "strategy.fraction_fit=0.5"])
    strategy = build_strategy(cfg, "tests.apps:two_stage_strategy")
    assert isinstance(strategy, Strategy) and strategy.name == "clip_to_median_norm"
    assert strategy.fraction_fit == 0.5
    assert strategy.client_config["epochs"] == 3 and strategy.client_config["lr"] == 0.05
    assert type(build_strategy(cfg, None)).__name__ == "FedAvg"
    with pytest.raises(DeploymentError, match="returned TwoLayerNet, not a fedloom Strategy"):
        build_strategy(cfg, MODEL)
    with pytest.raises(DeploymentError, match="expects module:function"):
        build_strategy(cfg, "tests.apps")
    with pytest.raises(DeploymentError, match="cannot load it"):
        build_strategy(cfg, "tests.apps:no_such_function")


def test_model_factory_must_return_a_module(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match=r"returned ClipToMedianNorm, not a torch.nn.Module"):
        _build(load_config(), _opts(tmp_path, model="tests.apps:two_stage_strategy"))


def _build(cfg: Config, opts: ServerOptions) -> Federation:
    return server_federation(cfg, model=opts.model, eval_data=opts.eval_data)
