"""Server optimisers: the aggregated client update is a pseudo-gradient (Reddi et al. 2021,
"Adaptive Federated Optimization").

``step(params, pseudo_grad, state) -> (params, state)``. SGD with lr=1 on the negated mean delta is
FedAvg; SGD with momentum is FedAvgM (Hsu et al. 2019); Adam is FedAdam. State is a plain dict of
arrays, so it can be checkpointed with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedloom.errors import ConfigError

OptState = dict[str, np.ndarray]


class ServerOptimizer(Protocol):
    def init(self, params: np.ndarray) -> OptState: ...

    def step(
        self, params: np.ndarray, pseudo_grad: np.ndarray, state: OptState
    ) -> tuple[np.ndarray, OptState]: ...


@dataclass(frozen=True)
class ServerSGD:
    """theta <- theta - lr * (momentum buffer), buffer <- momentum * buffer + g."""

    lr: float = 1.0
    momentum: float = 0.0

    def init(self, params: np.ndarray) -> OptState:
        return {"momentum": np.zeros_like(params)} if self.momentum else {}

    def step(
        self, params: np.ndarray, pseudo_grad: np.ndarray, state: OptState
    ) -> tuple[np.ndarray, OptState]:
        if self.momentum:
            buf = self.momentum * state["momentum"] + pseudo_grad
            return params - self.lr * buf, {"momentum": buf}
        return params - self.lr * pseudo_grad, state


@dataclass(frozen=True)
class ServerAdam:
    """Adam on the pseudo-gradient (FedAdam, Reddi et al. 2021, Algorithm 2)."""

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3

    def init(self, params: np.ndarray) -> OptState:
        return {"m": np.zeros_like(params), "v": np.zeros_like(params), "t": np.zeros(1)}

    def step(
        self, params: np.ndarray, pseudo_grad: np.ndarray, state: OptState
    ) -> tuple[np.ndarray, OptState]:
        m = self.beta1 * state["m"] + (1 - self.beta1) * pseudo_grad
        v = self.beta2 * state["v"] + (1 - self.beta2) * pseudo_grad**2
        new = params - self.lr * m / (np.sqrt(v) + self.eps)
        return new.astype(params.dtype), {"m": m, "v": v, "t": state["t"] + 1}


def make_server_optimizer(name: str, lr: float, momentum: float = 0.0) -> ServerOptimizer:
    """The server optimiser ``name``; an option that does not apply to it is an error."""
    if name == "sgd":
        return ServerSGD(lr=lr, momentum=momentum)
    if name == "adam":
        if momentum:
            raise ConfigError(
                f"strategy.server_momentum={momentum} applies to server_optimizer=sgd (FedAvgM); "
                "adam keeps its own first moment (beta1): leave server_momentum at 0"
            )
        return ServerAdam(lr=lr)
    raise ValueError(f"unknown server optimizer {name!r}; choose 'sgd' or 'adam'")
