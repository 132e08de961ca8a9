"""Server optimisers: the aggregated client update is a pseudo-gradient.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan. "Adaptive Federated
Optimization." ICLR 2021, Algorithms 1 and 2.

``step(params, pseudo_grad, state) -> (params, state)``. SGD with lr=1 on the negated mean delta is
FedAvg; SGD with momentum is FedAvgM (Hsu et al. 2019). Algorithm 2's adaptive optimisers share one
recipe on the pseudo-gradient ``g`` (the paper's ``Delta_t`` is ``-g``):

    m <- beta1 * m + (1 - beta1) * g
    v <- v + g^2                                            FedAdagrad
    v <- beta2 * v + (1 - beta2) * g^2                      FedAdam
    v <- v - (1 - beta2) * g^2 * sign(v - g^2)              FedYogi
    theta <- theta - lr * m / (sqrt(v) + tau)

with ``m`` starting at 0 and ``v`` at ``tau^2`` (the paper's ``v_{-1} >= tau^2``), and no bias
correction, as in the paper. ``tau`` is the adaptivity: the larger, the closer to SGD with
momentum. State is a plain dict of arrays, so it can be checkpointed with the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from fedloom.errors import ConfigError

log = logging.getLogger("fedloom")

OptState = dict[str, np.ndarray]

SERVER_OPTIMIZERS = ("sgd", "adam", "yogi", "adagrad")


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
class _Adaptive:
    """Algorithm 2 of Reddi et al. 2021; subclasses give the second-moment update."""

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    name: ClassVar[str] = "adaptive"

    def init(self, params: np.ndarray) -> OptState:
        v = np.full_like(params, self.tau**2)
        return {"m": np.zeros_like(params), "v": v, "t": np.zeros(1)}

    def second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(
        self, params: np.ndarray, pseudo_grad: np.ndarray, state: OptState
    ) -> tuple[np.ndarray, OptState]:
        m = self.beta1 * state["m"] + (1 - self.beta1) * pseudo_grad
        v = self.second_moment(state["v"], pseudo_grad**2)
        new = params - self.lr * m / (np.sqrt(v) + self.tau)
        return new.astype(params.dtype), {"m": m, "v": v, "t": state["t"] + 1}


@dataclass(frozen=True)
class ServerAdam(_Adaptive):
    """FedAdam: ``v <- beta2 v + (1 - beta2) g^2``."""

    name: ClassVar[str] = "adam"

    def second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * g2


@dataclass(frozen=True)
class ServerYogi(_Adaptive):
    """FedYogi: ``v <- v - (1 - beta2) g^2 sign(v - g^2)`` (Zaheer et al. 2018): ``v`` moves
    towards ``g^2`` by an additive step, so it grows as fast as Adam's but shrinks more slowly."""

    name: ClassVar[str] = "yogi"

    def second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return np.asarray(v - (1 - self.beta2) * g2 * np.sign(v - g2))


@dataclass(frozen=True)
class ServerAdagrad(_Adaptive):
    """FedAdagrad: ``v <- v + g^2`` (no ``beta2``)."""

    name: ClassVar[str] = "adagrad"

    def second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return np.asarray(v + g2)


_ADAPTIVE: dict[str, type[_Adaptive]] = {
    "adam": ServerAdam,
    "yogi": ServerYogi,
    "adagrad": ServerAdagrad,
}


def make_server_optimizer(
    name: str,
    lr: float,
    momentum: float = 0.0,
    beta1: float | None = None,
    beta2: float | None = None,
    tau: float | None = None,
) -> ServerOptimizer:
    """The server optimiser ``name`` (``strategy.server_optimizer``); an option that does not
    apply to it is a ``ConfigError`` naming the key. ``None`` options take the paper's defaults
    (beta1 0.9, beta2 0.99, tau 1e-3)."""
    if name == "sgd":
        given = {"beta1": beta1, "beta2": beta2, "tau": tau}
        for key, value in given.items():
            if value is not None:
                raise ConfigError(
                    f"strategy.{key}={value} applies to the adaptive server optimisers "
                    "(server_optimizer=adam, yogi or adagrad); sgd has none: remove it or "
                    "choose an adaptive server_optimizer"
                )
        return ServerSGD(lr=lr, momentum=momentum)
    if name not in _ADAPTIVE:
        raise ConfigError(
            f"strategy.server_optimizer={name!r}: allowed {', '.join(map(repr, SERVER_OPTIMIZERS))}"
        )
    if momentum:
        raise ConfigError(
            f"strategy.server_momentum={momentum} applies to server_optimizer=sgd (FedAvgM); "
            f"{name} keeps its own first moment (beta1): leave server_momentum at 0"
        )
    if name == "adagrad" and beta2 is not None:
        raise ConfigError(
            f"strategy.beta2={beta2} applies to server_optimizer=adam or yogi; adagrad sums the "
            "squared pseudo-gradients without decay: remove strategy.beta2"
        )
    if lr > ADAPTIVE_LR_WARNING:
        # an adaptive step moves every coordinate by about lr whatever the update's size
        log.warning(
            "strategy.server_lr=%g with server_optimizer=%s: an adaptive server optimiser moves "
            "each weight by about server_lr a round, so the default 1.0 (right for sgd) usually "
            "diverges; Reddi et al. 2021 tune it in [1e-3, 1e-1] (bench/heterogeneity.py chose "
            "0.1)",
            lr,
            name,
        )
    options = {"beta1": beta1, "beta2": beta2, "tau": tau}
    return _ADAPTIVE[name](lr=lr, **{k: v for k, v in options.items() if v is not None})


ADAPTIVE_LR_WARNING = 0.3
"""A server_lr above this with an adaptive server optimiser gets a warning."""
