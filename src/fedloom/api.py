"""``fedloom.simulate``: a federated simulation of the user's own model and data, in one call.

``fedloom run`` simulates a Config's built-in dataset, partition and reference model. Research code
has its own ``nn.Module`` and its own per-client arrays; ``simulate`` takes exactly those, wires
them into the same engines, strategies and coordinator, and writes the same results folder with
the same progress output::

    summary = fedloom.simulate(
        model_fn=lambda: MyNet(),
        clients=[(x0, y0), (x1, y1), ...],
        test=(x_test, y_test),
        rounds=10,
        config={"client.epochs": 2, "client.lr": 0.1},
        out_dir="runs/mine",
    )

Everything the user passes is checked before anything runs, and every error says what to change:
a mistake found in round 1 inside an engine would only show up as failed clients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedloom.client.base import Client
from fedloom.client.local import LocalTraining
from fedloom.client.torch_client import (
    LossFn,
    TaskType,
    TorchClient,
    evaluate_model,
    get_params,
    set_params,
)
from fedloom.config import Config, validate_config
from fedloom.core.params import Params, ParamSpec
from fedloom.data.federated import LocalArrays, split_clients
from fedloom.engines.base import ClientFn
from fedloom.errors import ConfigError
from fedloom.server.coordinator import CentralEvaluator, Population
from fedloom.simulation import default_out_dir, make_coordinator, run_recorded
from fedloom.strategies import Strategy
from fedloom.strategies.factory import STRATEGY_NAMES, make_strategy
from fedloom.tracking.summary import summarize

__all__ = ["simulate"]

log = logging.getLogger("fedloom")

ModelFn = Callable[[], nn.Module]
ArrayPair = tuple[npt.ArrayLike, npt.ArrayLike]

# Config sections that describe what simulate takes as arguments instead, and why each is refused.
_NOT_FOR_SIMULATE = {
    "dataset": "the data are the arrays you pass (clients=..., test=...)",
    "partition": "your clients are already split: one (x, y) pair per client",
    "model": "the model is what model_fn builds",
    "server": "it configures `fedloom server` deployments, and a simulation has no server",
}
# Config keys that simulate takes as its own arguments.
_ARGUMENTS = {"rounds": "rounds=", "seed": "seed=", "strategy.name": "strategy="}
# Config sections recorded in summary.json (the others are refused above).
_RECORDED_SECTIONS = (
    "seed",
    "rounds",
    "strategy",
    "client",
    "clients",
    "engine",
    "eval",
    "transport",
    "tracking",
)
_PROBE_ROWS = 2  # examples pushed through the model to check it before the run


@dataclass(frozen=True)
class _Task:
    """The learning task of the user's data and model: what the clients' metrics measure."""

    kind: TaskType
    num_outputs: int  # classes (0 until the model's output width settles it); 1 for regression


@dataclass(frozen=True)
class _Wired:
    """The clients of a run, as the coordinator and the summary see them."""

    client_fn: ClientFn
    population: Population
    data: dict[str, Any]  # summary.json's "dataset" facts


def simulate(
    model_fn: ModelFn,
    clients: Iterable[ArrayPair] | None = None,
    *,
    client_fn: ClientFn | None = None,
    num_clients: int | None = None,
    num_examples: Sequence[int] | None = None,
    test: ArrayPair | None = None,
    rounds: int = 10,
    strategy: str | Strategy = "fedavg",
    out_dir: str | Path | None = None,
    config: Mapping[str, Any] | None = None,
    seed: int = 0,
    quiet: bool = False,
    task: TaskType | None = None,
    num_classes: int | None = None,
    loss_fn: LossFn | None = None,
) -> dict[str, Any]:
    """Simulate federated training of ``model_fn()``'s model on the clients' own arrays.

    Writes the results folder of ``fedloom run`` to ``out_dir`` (``summary.json``,
    ``metrics.jsonl``, ``model.safetensors``, ``curves.png``), shows a progress line per round and
    a closing table unless ``quiet``, closes the engine, and returns the summary
    (``summary["final"]`` holds the last evaluated round's metrics).

    Parameters
    ----------
    model_fn:
        Builds the model: a function or class with no arguments (``lambda: MyNet()``, ``MyNet``).
        Its first model's parameters (under ``torch.manual_seed(seed)``) are the initial global
        model; the clients share that instance, since each task loads the global params first.
    clients:
        One ``(x, y)`` pair of arrays per client (numpy arrays or CPU tensors): ``x`` with one row
        per example, ``y`` one class id (integers) or target (floats) per example. Floating
        inputs are cast to float32, the model's dtype; integer inputs (token ids) are kept.
    client_fn, num_clients, num_examples:
        Instead of ``clients``: ``client_fn(cid)`` builds client ``cid`` of ``0..num_clients-1``
        (any ``fedloom.client.base.Client``, e.g. a ``TorchClient`` of your own). ``num_examples``
        gives each client's training-set size, so clients without data are skipped and the
        summary reports the total; without it every client is taken to have data.
    test:
        ``(x_test, y_test)`` for central evaluation of the global model after each round. Without
        it, each client keeps ``eval.client_test_fraction`` of its rows as a local test split and
        the run reports federated evaluation (``eval.federated``, on unless config turns it off).
    rounds, seed:
        Rounds to run; the seed of the model's initialisation, client selection and every
        client's shuffling, so the same seed gives the same ``metrics.jsonl``.
    strategy:
        ``"fedavg"``, ``"fedsgd"``, ``"fedprox"`` or ``"scaffold"`` (set up by the ``strategy.*``
        keys of ``config``), or a ``Strategy`` instance you configured yourself.
    out_dir:
        The results folder; default ``runs/<timestamp>``, as for ``fedloom run``.
    config:
        Dotted keys of the run config, validated as ``fedloom run --set`` validates them:
        ``client.*`` (local training), ``strategy.*``, ``engine.*`` (``engine.name``:
        ``vectorized``, ``sequential`` or ``ray``), ``eval.*``, ``transport.*``. ``dataset.*``,
        ``partition.*``, ``model.*`` and ``server.*`` are refused: the arguments replace them.
    task, num_classes:
        ``"classification"`` or ``"regression"``; inferred from ``y``'s dtype (integers classify,
        floats regress). ``num_classes`` defaults to the width of the model's output.
    loss_fn:
        ``loss_fn(output, y)``, a mean over the batch; default cross-entropy (classification) or
        mean squared error (regression).

    Raises
    ------
    ConfigError
        A config key is unknown, out of range or not for ``simulate``.
    TypeError, ValueError
        An argument has the wrong type or the arrays and the model do not fit together; the
        message names the argument (``clients[3]``, ``test``) and the fix.
    """
    started = time.perf_counter()
    if not isinstance(strategy, (str, Strategy)):
        raise TypeError(
            f"strategy must be a name ({', '.join(map(repr, STRATEGY_NAMES))}) or a "
            f"fedloom.strategies.Strategy instance, got {_describe(strategy)}"
        )
    if task not in (None, "classification", "regression"):
        raise ValueError(f"task must be 'classification', 'regression' or None, got {task!r}")
    cfg = _simulation_config(
        config, rounds=rounds, seed=seed, strategy=strategy, federated=test is None
    )
    chosen = make_strategy(cfg) if isinstance(strategy, str) else strategy
    local = _client_arrays(clients, client_fn, num_clients, num_examples)
    test_arrays = _pair(test, "test") if test is not None else None

    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)
    torch.manual_seed(cfg.seed)  # the initial global model
    model = _build_model(model_fn)
    eval_model = _build_model(model_fn)
    spec = ParamSpec.of(get_params(model))
    if ParamSpec.of(get_params(eval_model)) != spec:
        raise ValueError(
            "model_fn() built two models with different parameters; it must build the same "
            "architecture on every call"
        )
    init_params = spec.flatten(get_params(model))

    learning: _Task | None = None
    if local is not None:
        ys = [y for _, y in local] + ([test_arrays[1]] if test_arrays else [])
        _check_shapes(local, test_arrays)
        i = next(i for i, (x, _) in enumerate(local) if len(x))
        learning = _check_model(
            model, local[i][0], f"clients[{i}]", _learning_task(task, num_classes, ys)
        )
        wired = _array_clients(local, model, learning, cfg, test_arrays, loss_fn)
    else:
        assert client_fn is not None  # _client_arrays checked that one of them is given
        if test_arrays is not None:
            test_task = _learning_task(task, num_classes, [test_arrays[1]])
            learning = _check_model(model, test_arrays[0], "test", test_task)
        wired = _factory_clients(client_fn, num_clients, num_examples, cfg, test_arrays, learning)

    central_eval = (
        _central_eval(eval_model, test_arrays, learning, loss_fn)
        if test_arrays is not None and learning is not None
        else None
    )
    if central_eval is None and not (cfg.eval.federated and wired.population.has_test_data):
        log.warning(
            "no evaluation: there is no test set and no client has a local test split "
            "(eval.federated); the run reports the training loss only"
        )

    recorded = {k: v for k, v in cfg.model_dump(mode="json").items() if k in _RECORDED_SECTIONS}
    if not isinstance(strategy, str):
        recorded["strategy"] = {"name": chosen.name, "class": _qualname(chosen)}
    recorded["model"] = {"class": _qualname(model)}
    out = Path(out_dir) if out_dir is not None else default_out_dir()

    coordinator = make_coordinator(
        cfg,
        strategy=chosen,
        client_fn=wired.client_fn,
        spec=spec,
        init_params=init_params,
        population=wired.population,
        central_eval=central_eval,
    )

    def summary_of(history: list[dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
        return summarize(
            config=recorded,
            history=history,
            wall_seconds=wall_seconds,
            out_dir=out,
            num_clients=len(wired.population.num_examples),
            skipped_clients=wired.population.skipped,
            num_parameters=spec.size,
            data=wired.data,
        )

    return run_recorded(
        coordinator,
        cfg.rounds,
        out,
        quiet=quiet,
        summary_of=summary_of,
        started=started,
        tracking=cfg.tracking,
        run_config=recorded,
    )


# -- config --------------------------------------------------------------------------------------


def _simulation_config(
    config: Mapping[str, Any] | None,
    *,
    rounds: int,
    seed: int,
    strategy: str | Strategy,
    federated: bool,
) -> Config:
    """The run Config of a ``simulate`` call: ``config``'s dotted keys (nested mappings are read
    as dotted keys too) over the arguments, validated like ``--set`` overrides.

    ``federated`` is ``eval.federated`` unless ``config`` sets it: federated evaluation is the
    only evaluation a run without a test set has.
    """
    tree: dict[str, Any] = {"rounds": rounds, "seed": seed, "eval": {"federated": federated}}
    if isinstance(strategy, str):
        tree["strategy"] = {"name": strategy}
    for key, value in _dotted(config or {}, ""):
        section = key.split(".", 1)[0]
        if section in _NOT_FOR_SIMULATE:
            raise ConfigError(
                f"config[{key!r}]: {section}.* does not apply to fedloom.simulate: "
                f"{_NOT_FOR_SIMULATE[section]}"
            )
        if key in _ARGUMENTS:
            raise ConfigError(
                f"config[{key!r}]: pass {_ARGUMENTS[key]}... to simulate instead of the config key"
            )
        if section == "strategy" and not isinstance(strategy, str):
            raise ConfigError(
                f"config[{key!r}]: strategy.* keys set up a strategy given by name, but strategy= "
                f"is a {type(strategy).__name__} instance; set {key.split('.')[-1]} on the "
                "instance instead"
            )
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config[{key!r}]: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return validate_config(tree)


def _dotted(config: Mapping[Any, Any], prefix: str) -> list[tuple[str, Any]]:
    """``{"client": {"lr": 0.1}}`` and ``{"client.lr": 0.1}`` both as ``[("client.lr", 0.1)]``."""
    out: list[tuple[str, Any]] = []
    for key, value in config.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"config keys are dotted names such as 'client.lr', got {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_dotted(value, name + "."))
        else:
            out.append((name, value))
    return out


# -- arrays --------------------------------------------------------------------------------------


def _client_arrays(
    clients: Iterable[ArrayPair] | None,
    client_fn: ClientFn | None,
    num_clients: int | None,
    num_examples: Sequence[int] | None,
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The clients' ``(x, y)`` arrays, or None when ``client_fn`` builds the clients."""
    if clients is None and client_fn is None:
        raise ValueError(
            "no clients: pass clients=[(x0, y0), (x1, y1), ...] (one (x, y) pair of arrays per "
            "client), or client_fn=... with num_clients=N"
        )
    if clients is None:
        return None
    if client_fn is not None:
        raise ValueError("pass clients=[...] or client_fn=..., not both")
    if num_clients is not None or num_examples is not None:
        raise ValueError(
            "num_clients and num_examples go with client_fn; with clients=[...] they are the "
            "list's length and the arrays' sizes"
        )
    if isinstance(clients, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"clients must be a list of (x, y) pairs, one per client, got {_describe(clients)}; "
            "split your data first, e.g. "
            "clients=list(zip(np.array_split(x, 10), np.array_split(y, 10)))"
        )
    local = [_pair(item, f"clients[{i}]") for i, item in enumerate(clients)]
    if not local:
        raise ValueError(
            "clients is empty: pass one (x, y) pair of arrays per client, "
            "e.g. clients=[(x0, y0), (x1, y1)]"
        )
    if not any(len(y) for _, y in local):
        raise ValueError(f"all {len(local)} clients have 0 examples; give them data to train on")
    return local


def _pair(item: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as arrays: x with one row per example, y one label or target per example."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(
            f"{where} must be an (x, y) pair of arrays, got {_describe(item)}; "
            "pass one (x, y) pair per client, e.g. clients=[(x0, y0), (x1, y1)]"
        )
    x, y = _array(item[0], f"{where} x"), _array(item[1], f"{where} y")
    if x.ndim == 0:
        raise ValueError(f"{where}: x must hold one row per example, got a scalar")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{where}: y must hold one label or target per example, shape (n,), got shape {y.shape}"
        )
    if len(x) != len(y):
        raise ValueError(
            f"{where}: x has {len(x)} examples but y has {len(y)}; give one label per example"
        )
    if x.dtype.kind in "fb":
        x = x.astype(np.float32, copy=False)
    elif x.dtype.kind not in "iu":
        raise TypeError(f"{where}: x holds {x.dtype} values; give numbers (float or integer)")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{where}: x holds NaN or infinite values; drop or impute those rows")
    return x, y


def _array(value: object, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: not an array ({exc})") from None


def _describe(value: object) -> str:
    """``ndarray of shape (150, 64)``, ``list of 3 items``, ``str``: what was passed, for errors."""
    name = type(value).__name__
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{name} of shape {tuple(shape)}"
    if isinstance(value, (tuple, list)):
        return f"{name} of {len(value)} items"
    return name


def _learning_task(task: TaskType | None, num_classes: int | None, ys: list[np.ndarray]) -> _Task:
    """The task given or inferred from the labels' dtype; ``num_outputs`` is settled by
    ``_check_model`` from the model's output width."""
    if task is None:
        kinds = {y.dtype.kind for y in ys if len(y)} or {ys[0].dtype.kind}
        if kinds <= set("biu"):
            task = "classification"
        elif kinds <= set("biuf"):
            task = "regression"
        else:
            raise TypeError(
                f"y holds {', '.join(sorted(str(y.dtype) for y in ys[:3]))} values; give integer "
                "class ids 0..C-1 for classification (np.unique(y, return_inverse=True)[1] maps "
                "any labels to them) or float targets for regression"
            )
    if task == "regression":
        if num_classes is not None:
            raise ValueError(
                f"num_classes={num_classes} applies to classification, and the task is "
                "regression (float y); pass integer labels or task='classification'"
            )
        return _Task("regression", 1)
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return _Task("classification", num_classes or 0)


def _check_shapes(
    local: list[tuple[np.ndarray, np.ndarray]], test: tuple[np.ndarray, np.ndarray] | None
) -> None:
    shape = local[0][0].shape[1:]
    for i, (x, _) in enumerate(local):
        if x.shape[1:] != shape:
            raise ValueError(
                f"clients[{i}]: examples have shape {x.shape[1:]}, but clients[0]'s have "
                f"{shape}; every client's x must have the same shape per example"
            )
    if test is not None and test[0].shape[1:] != shape:
        raise ValueError(
            f"test: examples have shape {test[0].shape[1:]}, but the clients' have {shape}; "
            "the test set must have the clients' features"
        )


def _check_labels(y: np.ndarray, where: str, learning: _Task) -> np.ndarray:
    """``y`` as the dtype its task trains with: int64 class ids in ``0..num_outputs-1``, or
    finite float32 targets."""
    if learning.kind == "regression":
        if y.dtype.kind not in "biuf":
            raise TypeError(f"{where}: regression targets must be numbers, got {y.dtype}")
        target = y.astype(np.float32, copy=False)
        if not np.isfinite(target).all():
            raise ValueError(f"{where}: y holds NaN or infinite targets; drop or impute those rows")
        return target
    whole = y.dtype.kind in "biu" or (
        y.dtype.kind == "f" and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all())
    )
    if not whole:
        raise ValueError(
            f"{where}: classification needs whole-number class ids, y holds {y.dtype} values "
            "that are not; pass task='regression' for real-valued targets"
        )
    labels = y.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise ValueError(f"{where}: class ids must be >= 0, got {labels.min()}")
    if len(labels) and labels.max() >= learning.num_outputs:
        raise ValueError(
            f"{where}: labels go up to {labels.max()} but the model outputs "
            f"{learning.num_outputs} scores per example; give its last layer "
            f"{labels.max() + 1} outputs, one per class"
        )
    return labels


def _array_clients(
    local: list[tuple[np.ndarray, np.ndarray]],
    model: nn.Module,
    learning: _Task,
    cfg: Config,
    test: tuple[np.ndarray, np.ndarray] | None,
    loss_fn: LossFn | None,
) -> _Wired:
    """TorchClients over the arrays, sharing ``model``: plain TorchClients, so the vectorized
    engine trains them as one cohort. With ``eval.federated`` each keeps
    ``eval.client_test_fraction`` of its rows as its local test split, as ``fedloom run`` does."""
    fraction = cfg.eval.client_test_fraction if cfg.eval.federated else None
    splits = split_clients([np.arange(len(y)) for _, y in local], fraction, cfg.seed)
    arrays = []
    for i, ((x, y), rows) in enumerate(zip(local, splits, strict=True)):
        labels = _check_labels(y, f"clients[{i}]", learning)
        has_test = len(rows.test) > 0
        arrays.append(
            LocalArrays(
                x[rows.train],
                labels[rows.train],
                x[rows.test] if has_test else None,
                labels[rows.test] if has_test else None,
            )
        )
    training = LocalTraining.from_config(cfg.client)
    built = [
        TorchClient(
            model,
            a.x_train,
            a.y_train,
            x_test=a.x_test,
            y_test=a.y_test,
            task=learning.kind,
            num_classes=learning.num_outputs,
            client_id=cid,
            seed=cfg.seed,
            training=training,
            loss_fn=loss_fn,
        )
        for cid, a in enumerate(arrays)
    ]
    population = Population(
        num_examples={cid: len(a.x_train) for cid, a in enumerate(arrays)},
        has_test_data={cid for cid, a in enumerate(arrays) if a.x_test is not None},
    )
    data = {
        "name": "arrays",
        "task": learning.kind,
        "train_examples": sum(len(y) for _, y in local),
        "test_examples": len(test[0]) if test is not None else 0,
    }
    return _Wired(built.__getitem__, population, data)


def _factory_clients(
    client_fn: ClientFn,
    num_clients: int | None,
    num_examples: Sequence[int] | None,
    cfg: Config,
    test: tuple[np.ndarray, np.ndarray] | None,
    learning: _Task | None,
) -> _Wired:
    """The user's clients. Client 0 is built once up front, so a factory that cannot build
    clients fails here with its own traceback, not as a failed client in every round."""
    if not callable(client_fn):
        raise TypeError(f"client_fn must be a function cid -> Client, got {_describe(client_fn)}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(
            f"client_fn needs num_clients=N (N >= 1), the number of clients it builds "
            f"(ids 0..N-1); got {num_clients!r}"
        )
    if num_examples is None:
        sizes = dict.fromkeys(range(num_clients), 1)  # unknown: every client takes part
    else:
        sizes = dict(enumerate(int(n) for n in num_examples))
        if len(sizes) != num_clients or any(n < 0 for n in sizes.values()):
            raise ValueError(
                f"num_examples must give a size >= 0 for each of the {num_clients} clients, "
                f"got {list(num_examples)!r}"
            )
    first = client_fn(0)
    if not isinstance(first, Client):
        raise TypeError(
            f"client_fn(0) returned {_describe(first)}, which has no fit and evaluate methods; "
            "return a fedloom Client such as a TorchClient"
        )
    population = Population(
        num_examples=sizes,
        has_test_data={c for c, n in sizes.items() if n > 0} if cfg.eval.federated else set(),
    )
    data = {
        "name": "client_fn",
        "task": learning.kind if learning is not None else None,
        "train_examples": sum(sizes.values()) if num_examples is not None else None,
        "test_examples": len(test[0]) if test is not None else 0,
    }
    return _Wired(client_fn, population, data)


# -- model ---------------------------------------------------------------------------------------


def _build_model(model_fn: ModelFn) -> nn.Module:
    if isinstance(model_fn, nn.Module):
        raise TypeError(
            f"model_fn must build the model, not be it: pass model_fn=lambda: "
            f"{type(model_fn).__name__}(...) (or the class {type(model_fn).__name__}), "
            f"not a {type(model_fn).__name__} instance"
        )
    if not callable(model_fn):
        raise TypeError(
            f"model_fn must be a function that returns a torch.nn.Module, such as "
            f"lambda: MyNet(); got {_describe(model_fn)}"
        )
    model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model_fn() returned {_describe(model)}, not a torch.nn.Module; "
            "return the model, e.g. model_fn=lambda: MyNet()"
        )
    if not any(p.requires_grad and p.is_floating_point() for p in model.parameters()):
        raise ValueError(
            f"model_fn()'s {type(model).__name__} has no trainable floating-point parameters; "
            "there is nothing to train"
        )
    return model


def _check_model(model: nn.Module, x: np.ndarray, where: str, learning: _Task) -> _Task:
    """Run the model on a few of ``where``'s examples: it must accept them and give one score per
    class (classification) or one output per example (regression). Returns ``learning`` with the
    number of classes settled by the model's output width."""
    batch = torch.from_numpy(np.ascontiguousarray(x[:_PROBE_ROWS]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception as exc:
        raise ValueError(
            f"the model from model_fn() fails on {where}'s examples (a batch of shape "
            f"{tuple(batch.shape)}): {type(exc).__name__}: {exc}; make its input layer take "
            f"examples of shape {tuple(x.shape[1:])}"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the model's forward returned {_describe(out)}; it must return a tensor of scores"
        )
    n = len(batch)
    if learning.kind == "regression":
        if out.numel() != n:
            raise ValueError(
                f"regression needs one output per example, shape (batch,) or (batch, 1); the "
                f"model gives shape {tuple(out.shape)} for a batch of {n}"
            )
        return learning
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(
            f"classification needs one score per class, shape (batch, num_classes); the model "
            f"gives shape {tuple(out.shape)} for a batch of {n}"
        )
    width = int(out.shape[1])
    if learning.num_outputs and learning.num_outputs != width:
        raise ValueError(
            f"num_classes={learning.num_outputs} but the model outputs {width} scores per "
            "example; make them agree"
        )
    if width < 2:
        raise ValueError(
            "the model outputs 1 score per example; classification needs one per class (2 or "
            "more), or pass task='regression' for a real-valued target"
        )
    return replace(learning, num_outputs=width)


def _central_eval(
    model: nn.Module,
    test: tuple[np.ndarray, np.ndarray],
    learning: _Task,
    loss_fn: LossFn | None,
) -> CentralEvaluator:
    """Evaluation of the global model on ``test`` with its own model instance."""
    x, y = test[0], _check_labels(test[1], "test", learning)

    def evaluate(params: Params) -> dict[str, Any]:
        set_params(model, params)
        return evaluate_model(
            model, x, y, task=learning.kind, num_classes=learning.num_outputs, loss_fn=loss_fn
        )

    return evaluate


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
