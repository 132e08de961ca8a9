"""The ``arrays`` app kind: a federation of the user's own model and data, as
``fedloom.simulate`` takes them (one ``(x, y)`` pair of arrays per client, or a client factory),
checked (:mod:`fedloom.app.inputs`) and wired into a ``Federation``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedloom.app.evaluation import central_evaluator
from fedloom.app.federation import Federation
from fedloom.app.inputs import (
    ArrayPair,
    LearningTask,
    ModelFn,
    array_pair,
    build_user_model,
    check_labels,
    check_model,
    check_shapes,
    client_arrays,
    describe,
    learning_task,
)
from fedloom.client.base import Client
from fedloom.client.local import LocalTraining
from fedloom.client.torch_client import LossFn, TaskType, TorchClient, get_params
from fedloom.config import Config
from fedloom.core.params import ParamSpec
from fedloom.data.federated import LocalArrays, split_clients
from fedloom.engines.base import ClientFn
from fedloom.server.coordinator import Population
from fedloom.strategies import Strategy

__all__ = ["arrays_federation"]

log = logging.getLogger("fedloom")

# Config sections recorded in summary.json (simulate refuses the others).
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


@dataclass(frozen=True)
class _Wired:
    """The clients of a run, as the coordinator and the summary see them."""

    client_fn: ClientFn
    population: Population
    data: dict[str, Any]  # summary.json's "dataset" facts


def arrays_federation(
    cfg: Config,
    model_fn: ModelFn,
    *,
    clients: Iterable[ArrayPair] | None,
    client_fn: ClientFn | None,
    num_clients: int | None,
    num_examples: Sequence[int] | None,
    test: ArrayPair | None,
    strategy: Strategy,
    named: bool,
    task: TaskType | None,
    num_classes: int | None,
    loss_fn: LossFn | None,
) -> Federation:
    """The federation of ``fedloom.simulate``'s arguments (see there), under ``cfg``.

    ``named``: the strategy was given by name (the summary records the config's ``strategy``
    section; otherwise the instance's name and class).
    """
    local = client_arrays(clients, client_fn, num_clients, num_examples)
    test_arrays = array_pair(test, "test") if test is not None else None

    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)
    torch.manual_seed(cfg.seed)  # the initial global model
    model = build_user_model(model_fn)
    eval_model = build_user_model(model_fn)
    spec = ParamSpec.of(get_params(model))
    if ParamSpec.of(get_params(eval_model)) != spec:
        raise ValueError(
            "model_fn() built two models with different parameters; it must build the same "
            "architecture on every call"
        )
    init_params = spec.flatten(get_params(model))

    learning: LearningTask | None = None
    if local is not None:
        ys = [y for _, y in local] + ([test_arrays[1]] if test_arrays else [])
        check_shapes(local, test_arrays)
        i = next(i for i, (x, _) in enumerate(local) if len(x))
        learning = check_model(
            model, local[i][0], f"clients[{i}]", learning_task(task, num_classes, ys)
        )
        wired = _array_clients(local, model, learning, cfg, test_arrays, loss_fn)
    else:
        assert client_fn is not None  # client_arrays checked that one of them is given
        if test_arrays is not None:
            test_task = learning_task(task, num_classes, [test_arrays[1]])
            learning = check_model(model, test_arrays[0], "test", test_task)
        wired = _factory_clients(client_fn, num_clients, num_examples, cfg, test_arrays, learning)

    central_eval = None
    if test_arrays is not None and learning is not None:
        x, y = test_arrays[0], check_labels(test_arrays[1], "test", learning)
        central_eval = central_evaluator(
            eval_model, x, y, task=learning.kind, num_classes=learning.num_outputs, loss_fn=loss_fn
        )
    if central_eval is None and not (cfg.eval.federated and wired.population.has_test_data):
        log.warning(
            "no evaluation: there is no test set and no client has a local test split "
            "(eval.federated); the run reports the training loss only"
        )

    recorded = {k: v for k, v in cfg.model_dump(mode="json").items() if k in _RECORDED_SECTIONS}
    if not named:
        recorded["strategy"] = {"name": strategy.name, "class": _qualname(strategy)}
    recorded["model"] = {"class": _qualname(model)}
    return Federation(
        cfg=cfg,
        spec=spec,
        init_params=init_params,
        strategy=strategy,
        population=wired.population,
        client_fn=wired.client_fn,
        central_eval=central_eval,
        data=wired.data,
        recorded=recorded,
    )


def _array_clients(
    local: list[tuple[np.ndarray, np.ndarray]],
    model: nn.Module,
    learning: LearningTask,
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
        labels = check_labels(y, f"clients[{i}]", learning)
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
    learning: LearningTask | None,
) -> _Wired:
    """The user's clients. Client 0 is built once up front, so a factory that cannot build
    clients fails here with its own traceback, not as a failed client in every round."""
    if not callable(client_fn):
        raise TypeError(f"client_fn must be a function cid -> Client, got {describe(client_fn)}")
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
            f"client_fn(0) returned {describe(first)}, which has no fit and evaluate methods; "
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


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
