"""The user's code in a deployment server: the global model from ``--model module:function``
(then the server loads no dataset) with central evaluation on ``--eval-data FILE.npz``, and the
strategy from ``--strategy module:function``; without them, what the config's app kind builds
(``fedloom.app.registry``). Only the server side is built: no client is simulated."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedloom.app.evaluation import eval_data_evaluator
from fedloom.app.federation import Federation
from fedloom.app.registry import app_kind
from fedloom.client.torch_client import get_params
from fedloom.config import Config
from fedloom.core.params import ParamSpec
from fedloom.errors import ConfigError, DeploymentError
from fedloom.plugins import call_factory, load_entry_point
from fedloom.server.coordinator import CentralEvaluator, Population
from fedloom.strategies import Strategy

__all__ = ["build_strategy", "server_federation"]


def server_federation(
    cfg: Config,
    *,
    model: str | None = None,
    strategy: str | None = None,
    eval_data: Path | None = None,
) -> Federation:
    """The server side of a deployment: the model from ``--model`` (no dataset is loaded) or
    from the config's app kind (as ``fedloom run`` builds it, with central evaluation on the
    dataset's test split, and no clients), the strategy from ``--strategy`` or the config, and
    central evaluation on ``--eval-data`` if given."""
    if eval_data is not None and not cfg.server.central_eval:
        raise ConfigError(
            f"--eval-data {eval_data} asks for central evaluation, but "
            "server.central_eval is false; drop one of them"
        )
    kind = app_kind(cfg)
    if model is not None and kind.own_model is not None:
        raise ConfigError(f"--model {model}: {kind.own_model}; drop --model")
    chosen = build_strategy(cfg, strategy)
    if model is None:
        return kind.server(cfg, eval_data, chosen)
    factory = load_entry_point(model, "--model")
    torch.manual_seed(cfg.seed)  # the same initial model on every (re)start of the run
    module = call_factory(factory, cfg, "--model", model)
    if not isinstance(module, nn.Module):
        raise DeploymentError(
            f"--model {model} returned {type(module).__name__}, not a torch.nn.Module; "
            "the factory must return the model itself, e.g. `def make_model(): return MyNet()`"
        )
    params = get_params(module)
    if not params:
        raise DeploymentError(
            f"--model {model}: the model has no floating-point parameters to train"
        )
    spec = ParamSpec.of(params)
    evaluator: CentralEvaluator | None = None
    data: dict[str, Any] = {}
    eval_source = "off (the server has no data with --model; pass --eval-data FILE.npz)"
    if eval_data is not None:
        evaluator, data = eval_data_evaluator(eval_data, copy.deepcopy(module))
        eval_source = str(eval_data)
    return Federation(
        cfg=cfg,
        spec=spec,
        init_params=spec.flatten(params),
        strategy=chosen,
        population=Population(num_examples={}),
        central_eval=evaluator,
        data=data,
        source=model,
        eval_source=eval_source,
    )


def build_strategy(cfg: Config, entry_point: str | None) -> Strategy:
    """The strategy from ``--strategy module:function`` (called with the Config, or with no
    arguments), or the config's ``strategy`` section."""
    if cfg.clients.enabled:
        raise ConfigError(
            "clients.enabled: the clients section simulates client speeds and availability on a "
            "virtual clock (fedloom run); a deployment's clients are real processes. Remove it "
            "from the server's config"
        )
    if entry_point is None:
        return _deployable(cfg, app_kind(cfg).strategy(cfg))
    factory = load_entry_point(entry_point, "--strategy")
    strategy = call_factory(factory, cfg, "--strategy", entry_point)
    if not isinstance(strategy, Strategy):
        raise DeploymentError(
            f"--strategy {entry_point} returned {type(strategy).__name__}, not a fedloom "
            "Strategy; return an instance of a subclass of fedloom.strategies.Strategy "
            "(FedAvg, Scaffold, or your own)"
        )
    return _deployable(cfg, strategy)


def _deployable(cfg: Config, strategy: Strategy) -> Strategy:
    """``strategy``, unless it is asynchronous (FedBuff: no round barrier) with deployment
    settings it has no use for."""
    if not strategy.asynchronous:
        return strategy
    if cfg.server.over_selection > 0:
        raise ConfigError(
            f"server.over_selection: {strategy.name} keeps strategy.concurrency clients at work and "
            "steps on the first strategy.buffer_size updates, so there are no stragglers to "
            "stand in for; set it to 0"
        )
    if cfg.pruning.enabled:
        raise ConfigError(
            f"pruning.enabled: {strategy.name}'s updates arrive rounds after they started, under "
            "the pruning mask of their own round, which a later mask would refuse; turn pruning "
            f"off with strategy.name={strategy.name} in a deployment"
        )
    return strategy
