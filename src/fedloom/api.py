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

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedloom.app.arrays import arrays_federation
from fedloom.app.inputs import ArrayPair, ModelFn, describe
from fedloom.client.torch_client import LossFn, TaskType
from fedloom.config import Config, validate_config
from fedloom.engines.base import ClientFn
from fedloom.errors import ConfigError
from fedloom.simulation import default_out_dir, run_federation
from fedloom.strategies import Strategy
from fedloom.strategies.factory import STRATEGY_NAMES, make_strategy

__all__ = ["simulate"]

# Config sections that describe what simulate takes as arguments instead, and why each is refused.
_NOT_FOR_SIMULATE = {
    "dataset": "the data are the arrays you pass (clients=..., test=...)",
    "partition": "your clients are already split: one (x, y) pair per client",
    "model": "the model is what model_fn builds",
    "server": "it configures `fedloom server` deployments, and a simulation has no server",
}
# Config keys that simulate takes as its own arguments.
_ARGUMENTS = {"rounds": "rounds=", "seed": "seed=", "strategy.name": "strategy="}


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
            f"fedloom.strategies.Strategy instance, got {describe(strategy)}"
        )
    if task not in (None, "classification", "regression"):
        raise ValueError(f"task must be 'classification', 'regression' or None, got {task!r}")
    cfg = _simulation_config(
        config, rounds=rounds, seed=seed, strategy=strategy, federated=test is None
    )
    chosen = make_strategy(cfg) if isinstance(strategy, str) else strategy
    federation = arrays_federation(
        cfg,
        model_fn,
        clients=clients,
        client_fn=client_fn,
        num_clients=num_clients,
        num_examples=num_examples,
        test=test,
        strategy=chosen,
        named=isinstance(strategy, str),
        task=task,
        num_classes=num_classes,
        loss_fn=loss_fn,
    )
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    return run_federation(federation, out, quiet=quiet, started=started)


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
