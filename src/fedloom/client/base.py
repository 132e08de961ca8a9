"""The client protocol: anything with ``fit`` and ``evaluate`` can take part in a federation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedloom.core.params import Params


@dataclass
class FitResult:
    """A client's answer to a fit task.

    ``update`` is what the strategy asked for (``config["mode"]``): the model delta
    ``local - global`` after local training, or the gradient of the local loss at the global model.
    It may be Params or a flat vector in the model's ParamSpec order; algorithms that upload more
    than one model-sized vector (SCAFFOLD's control variate delta) return them concatenated.
    """

    update: Params | np.ndarray
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    rows: np.ndarray | None = None
    """For a task whose upload is row-sparse (``Upload.rows``): the rows this update touches, as
    booleans over the rows or as row indices. Only they are sent; the update is zero elsewhere."""


@dataclass
class EvalResult:
    """A client's evaluation of the global model on its local test data."""

    loss: float
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ClientContext:
    """What a task gives a client beside the global params and the config.

    ``blobs``: the task's other payloads by role (flat vectors in the model's parameter order), for
    instance SCAFFOLD's server control variate. ``state``: this client's state (named arrays kept
    across rounds by the engine or the client process); the client updates it in place.
    """

    blobs: Mapping[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class PlainClient(Protocol):
    """One participant. ``params`` is the global model; ``config`` comes from the strategy."""

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult: ...

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult: ...


@runtime_checkable
class ContextClient(Protocol):
    """A participant that also takes the task's ``ClientContext``: the task's extra payloads and
    its own state. Algorithms that need them (SCAFFOLD) refuse clients that do not take it."""

    def fit(
        self, params: Params, config: Mapping[str, Any], context: ClientContext
    ) -> FitResult: ...

    def evaluate(
        self, params: Params, config: Mapping[str, Any], context: ClientContext
    ) -> EvalResult: ...


Client = PlainClient | ContextClient
"""Anything with ``fit`` and ``evaluate``, with or without the context argument (``TorchClient``
takes it as an optional third argument, so it is both)."""
