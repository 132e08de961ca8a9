"""The user's code in a deployment server: the global model from the config or from
``--model module:function`` (then the server loads no dataset), central evaluation on the
config's test split or on ``--eval-data FILE.npz``, and the strategy from the config or from
``--strategy module:function``.

``dataset.name: movielens`` builds what ``fedloom run`` builds for it (``fedloom.recommendation``):
the item factors and biases as the global model, federated collaborative filtering as the
strategy, and no central evaluation (the server holds no user factor; evaluation is federated)."""

from __future__ import annotations

import copy
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedloom.client.torch_client import TaskType, evaluate_model, get_params, set_params
from fedloom.config import Config
from fedloom.core.params import Params, ParamSpec
from fedloom.errors import ConfigError, DeploymentError
from fedloom.plugins import call_factory, load_entry_point
from fedloom.recommendation import RecommendationSimulation, check_config, fcf_strategy
from fedloom.server.coordinator import CentralEvaluator
from fedloom.simulation import Simulation
from fedloom.strategies import Strategy
from fedloom.strategies.factory import make_strategy


@dataclass
class GlobalModel:
    """What the server needs of the model: its parameter layout and initial params, central
    evaluation (None: off), and how to describe both in the log and the summary (``data``: what
    the server evaluates on, empty when it has no data)."""

    spec: ParamSpec
    init_params: np.ndarray
    central_eval: CentralEvaluator | None
    source: str
    eval_source: str
    data: dict[str, Any]


def build_global_model(cfg: Config, model: str | None, eval_data: Path | None) -> GlobalModel:
    """The model from ``--model`` (no dataset is loaded) or from the config (as ``fedloom run``
    builds it, with central evaluation on the dataset's test split)."""
    if eval_data is not None and not cfg.server.central_eval:
        raise ConfigError(
            f"--eval-data {eval_data} asks for central evaluation, but "
            "server.central_eval is false; drop one of them"
        )
    if cfg.dataset.name == "movielens":
        return _recommendation_model(cfg, model, eval_data)
    if model is None:
        sim = Simulation(cfg)  # the model, its initial params and the central test split
        ds = sim.dataset
        if eval_data is not None:
            evaluator, data = eval_data_evaluator(eval_data, sim.new_model())
            source = str(eval_data)
        else:
            evaluator, source = sim.central_eval, f"the {ds.name} test split"
            data = {
                "name": ds.name,
                "task": ds.task,
                "train_examples": len(ds.x_train),
                "test_examples": len(ds.x_test),
            }
        central = evaluator if cfg.server.central_eval else None
        return GlobalModel(
            spec=sim.spec,
            init_params=sim.init_params,
            central_eval=central,
            source=f"{cfg.model.name} from the config",
            eval_source=source if central is not None else "off (server.central_eval=false)",
            data=data,
        )
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
    if eval_data is None:
        return GlobalModel(
            spec=spec,
            init_params=spec.flatten(params),
            central_eval=None,
            source=model,
            eval_source="off (the server has no data with --model; pass --eval-data FILE.npz)",
            data={},
        )
    evaluator, data = eval_data_evaluator(eval_data, copy.deepcopy(module))
    return GlobalModel(
        spec=spec,
        init_params=spec.flatten(params),
        central_eval=evaluator,
        source=model,
        eval_source=str(eval_data),
        data=data,
    )


def _recommendation_model(cfg: Config, model: str | None, eval_data: Path | None) -> GlobalModel:
    """The item side of a movielens run's matrix factorisation, as ``fedloom run`` builds it."""
    if model is not None:
        raise ConfigError(
            f"--model {model}: dataset.name=movielens trains the config's matrix factorisation "
            "(model.name: mf), whose user factors stay on the clients; drop --model"
        )
    if eval_data is not None:
        raise ConfigError(
            f"--eval-data {eval_data}: dataset.name=movielens is evaluated on the clients "
            "(eval.federated), because the server holds no user factor; drop --eval-data"
        )
    # refuses, naming the key, what the FCF client cannot do
    sim = RecommendationSimulation(cfg, deployment=True)
    return GlobalModel(
        spec=sim.spec,
        init_params=sim.init_params,
        central_eval=None,
        source=f"{cfg.model.name} from the config (item factors and item biases)",
        eval_source="off (the server holds no user factor; evaluation is federated)",
        data=sim.data,
    )


def eval_data_evaluator(path: Path, model: nn.Module) -> tuple[CentralEvaluator, dict[str, Any]]:
    """Central evaluation of ``model`` on an ``.npz`` file with arrays ``x`` and ``y``.

    ``x`` holds the inputs exactly as the model takes them (``(n, *input_shape)``, cast to
    float32). ``y`` decides the task: integer class ids mean classification, with as many classes
    as the model has outputs; floats mean regression (one output, metrics in ``y``'s units).
    The same metric functions as a simulation's central evaluation are used.
    """
    x, y = _read_eval_arrays(path)
    classification = np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            width = int(model(torch.from_numpy(x[:1])).reshape(1, -1).shape[1])
    except Exception as exc:
        raise DeploymentError(
            f"--eval-data {path}: the model cannot take x of shape {x.shape[1:]} per example "
            f"({type(exc).__name__}: {exc}); save x exactly as the model takes it"
        ) from None
    finally:
        model.train(was_training)
    task: TaskType = "classification" if classification else "regression"
    if classification:
        targets = y.astype(np.int64)
        if width < 2 or targets.min() < 0 or targets.max() >= width:
            raise DeploymentError(
                f"--eval-data {path}: y holds class ids {int(targets.min())}.."
                f"{int(targets.max())}, but the model has {width} outputs; classification needs "
                "one output per class (or save y as floats for regression)"
            )
        num_classes = width
    else:
        if width != 1:
            raise DeploymentError(
                f"--eval-data {path}: y holds floats (regression), but the model has {width} "
                "outputs, not 1; save y as integer class ids for classification"
            )
        targets, num_classes = y.astype(np.float32), 1

    def evaluate(params: Params) -> dict[str, Any]:
        set_params(model, params)
        return evaluate_model(model, x, targets, task=task, num_classes=num_classes)

    data = {"eval_data": str(path), "task": task, "test_examples": len(targets)}
    if classification:
        data["num_classes"] = num_classes
    return evaluate, data


def _read_eval_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    how = "save it with numpy.savez(PATH, x=inputs, y=targets)"
    if not path.is_file():
        raise DeploymentError(f"--eval-data {path}: no such file; {how}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DeploymentError(f"--eval-data {path}: cannot read it ({exc}); {how}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DeploymentError(f"--eval-data {path} is one array, not an .npz archive; {how}")
    try:
        with loaded as data:
            missing = sorted({"x", "y"} - set(data.files))
            if missing:
                raise DeploymentError(
                    f"--eval-data {path} has arrays {sorted(data.files)}, no {' or '.join(missing)}"
                    f"; {how}"
                )
            x, y = data["x"], data["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DeploymentError(f"--eval-data {path}: cannot read it ({exc}); {how}") from None
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise DeploymentError(
            f"--eval-data {path}: x must be (n, *input_shape) and y (n,) with n >= 1, got x "
            f"{x.shape} and y {y.shape}"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DeploymentError(f"--eval-data {path}: x must be numeric, got {x.dtype}")
    numeric_y = np.issubdtype(y.dtype, np.number) and not np.issubdtype(y.dtype, np.complexfloating)
    if not (numeric_y or y.dtype == np.bool_):
        raise DeploymentError(
            f"--eval-data {path}: y must hold integer class ids or float targets, got {y.dtype}"
        )
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise DeploymentError(f"--eval-data {path}: y holds NaN or inf")
    return np.ascontiguousarray(x, dtype=np.float32), y


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
        if cfg.dataset.name == "movielens":
            check_config(cfg, deployment=True)
            return fcf_strategy(cfg)
        return _deployable(cfg, make_strategy(cfg))
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
