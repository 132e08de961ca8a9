"""The server's state folder: rounds and checkpoints committed together, every array of the
server's state checkpointed, and a checkpoint that lacks state the run needs refused."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedloom.app.user_code import server_federation
from fedloom.client.base import EvalResult, FitResult
from fedloom.config import load_config
from fedloom.core.params import Params, ParamSpec
from fedloom.engines import SequentialEngine
from fedloom.errors import DeploymentError
from fedloom.optim import ServerSGD
from fedloom.server.coordinator import Coordinator, Population
from fedloom.server.deploy import ServerOptions, run_identity, serve
from fedloom.server.state import StateStore
from fedloom.simulation import Simulation
from fedloom.strategies import FedAvg, Scaffold, Strategy

pytestmark = pytest.mark.deploy

SPEC = ParamSpec(names=("w",), shapes=((4,),), dtypes=("<f4",))


class NoClient:
    """Never asked to train: these coordinators only checkpoint and restore."""

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        raise AssertionError("not used")

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        raise AssertionError("not used")


def _coordinator(strategy: Strategy) -> Coordinator:
    return Coordinator(
        strategy=strategy,
        engine=SequentialEngine(lambda cid: NoClient()),
        spec=SPEC,
        params=np.zeros(4, np.float32),
        population=Population({0: 1}),
    )


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
            {"round": r, "status": "ok", "loss": 1.0 / r},
            {"params": params, "opt.momentum": params * 2},
            keep=2,
        )
    store.close()
    again = StateStore(tmp_path)
    info = again.open_run("{}", {"seed": 1})

    # Assert
    assert (info.resumed, info.last_round, info.run_id) == (True, 3, info.run_id)
    arrays = again.load_checkpoint(3)
    assert arrays["params"].tolist() == [3.0] * 4 and arrays["opt.momentum"].tolist() == [6.0] * 4
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


def test_every_array_of_the_server_state_round_trips(tmp_path: Path) -> None:
    # Prepare: SCAFFOLD with server momentum, after a round changed all three kinds of state
    before = _coordinator(Scaffold(server_optimizer=ServerSGD(lr=1.0, momentum=0.9)))
    before.params = np.array([1, 2, 3, 4], np.float32)
    before.opt_state = {"momentum": np.array([0.5, 0, 0, 0], np.float32)}
    before.strategy_state["control"] = np.array([0.1, -0.2, 0.3, -0.4], np.float32)
    before.strategy_state["clip_bound"] = np.array([2.5], np.float32)  # made during a round
    store = StateStore(tmp_path)
    store.open_run("{}", {})

    # Execute
    store.commit_round({"round": 1, "status": "ok"}, before.checkpoint())
    after = _coordinator(Scaffold(server_optimizer=ServerSGD(lr=1.0, momentum=0.9)))
    after.restore(store.load_checkpoint(1, needs=after.checkpoint()))

    # Assert
    assert sorted(after.checkpoint()) == [
        "opt.momentum",
        "params",
        "strategy.clip_bound",
        "strategy.control",
    ]
    for name, value in before.checkpoint().items():
        np.testing.assert_array_equal(after.checkpoint()[name], value, err_msg=name)
    store.close()


def test_old_checkpoints_load_for_stateless_strategies_only(tmp_path: Path) -> None:
    # Prepare: a checkpoint as fedloom wrote it before strategy state existed
    store = StateStore(tmp_path)
    store.open_run("{}", {})
    store.commit_round({"round": 1, "status": "ok"}, {"params": np.ones(4, np.float32)})

    # Execute / Assert: FedAvg keeps no strategy state, so the old checkpoint is all it needs
    fedavg = _coordinator(FedAvg())
    fedavg.restore(store.load_checkpoint(1, needs=fedavg.checkpoint()))
    assert fedavg.params.tolist() == [1.0] * 4 and fedavg.strategy_state == {}

    # Execute / Assert: SCAFFOLD would restart from a zero control variate; it is refused
    scaffold = _coordinator(Scaffold())
    with pytest.raises(DeploymentError) as info:
        store.load_checkpoint(1, needs=scaffold.checkpoint())
    message = str(info.value)
    assert "cannot resume: the checkpoint of round 1" in message
    assert "lacks strategy.control, which this run needs" in message
    assert "before fedloom checkpointed strategy state" in message
    assert "new --state folder" in message

    # Execute / Assert: and so is a checkpoint of another model's size
    store.commit_round({"round": 2, "status": "ok"}, {"params": np.ones(5, np.float32)})
    with pytest.raises(DeploymentError, match=r"params has shape \(5,\), the run expects \(4,\)"):
        store.load_checkpoint(2, needs=fedavg.checkpoint())
    store.close()


def test_server_refuses_to_resume_scaffold_from_a_checkpoint_without_its_control_variate(
    tmp_path: Path,
) -> None:
    # Prepare: a SCAFFOLD run whose state folder holds a params-only checkpoint of round 1
    cfg = load_config(None, ["strategy.name=scaffold", "model.hidden=[8]", "rounds=3"])
    opts = ServerOptions(
        address="127.0.0.1:0", state=tmp_path / "state", out=tmp_path / "out", insecure=True
    )
    store = StateStore(opts.state)
    store.open_run(cfg.model_dump_json(), run_identity(cfg, opts))
    params = Simulation(cfg).init_params
    store.commit_round({"round": 1, "status": "ok"}, {"params": params})
    store.close()

    # Execute / Assert: it stops before it serves anyone, and says why
    with pytest.raises(DeploymentError, match=r"lacks strategy\.control, which this run needs"):
        serve(cfg, opts, lambda: server_federation(cfg))
