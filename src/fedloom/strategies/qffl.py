"""q-FFL: fair resource allocation, trained with q-FedAvg.

Li, Sanjabi, Beirami, Smith. "Fair Resource Allocation in Federated Learning." ICLR 2020,
Algorithm 2 (q-FedAvg).

q-FFL minimises ``f_q(w) = sum_k p_k / (q + 1) * F_k(w)^(q + 1)`` instead of FedAvg's
``sum_k p_k F_k(w)``: the larger ``q``, the more the clients with a high loss count, so accuracy is
spread more evenly across clients (``q = 0`` is FedAvg's objective). Each selected client ``k``
runs local SGD from the global model ``w`` to ``w_k`` as in FedAvg and reports ``F_k(w)``, its mean
loss on its training data at the global model (measured before training). With ``L = 1 / lr``
(the client learning rate, the paper's estimate of the Lipschitz constant):

    dw_k    = L (w - w_k)
    Delta_k = F_k(w)^q dw_k
    h_k     = q F_k(w)^(q - 1) ||dw_k||^2 + L F_k(w)^q
    w'      = w - sum_k Delta_k / sum_k h_k

Clients are summed unweighted, as in the paper, whose sampling draws them in proportion to
``p_k``; here selection is uniform (``strategy.fraction_fit``), so every client counts as
``p_k = 1 / N``. With ``q = 0`` the step is the unweighted mean of the local models. The server
optimiser then steps on ``sum_k Delta_k / sum_k h_k`` (``server_lr = 1``: the paper's step).

The client half is a hook that asks the trainers for ``F_k(w)`` and reports it as ``qffl_loss``;
the upload is the plain delta ``w_k - w``. A client with no positive finite ``qffl_loss`` is left
out of the round. The sums stream, so no update is buffered; a robust aggregator has no meaning
here and is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedloom.client.local import LocalHooks, LocalTraining, register_hooks
from fedloom.core.task import Result
from fedloom.errors import ConfigError
from fedloom.strategies.base import Exchange, RoundContext, RoundPlan, positive_metric
from fedloom.strategies.fedavg import FedAvg

log = logging.getLogger("fedloom")

LOSS = "qffl_loss"
"""The fit metric that carries ``F_k(w)``."""


class QFFLHooks(LocalHooks):
    """Plain local training that also reports ``F_k(w)`` at the global model."""

    name = "qffl"
    start_loss = True

    def metrics(self, steps: int, start_loss: float | None) -> dict[str, float]:
        assert start_loss is not None  # the trainers measure it: start_loss is set
        return {LOSS: start_loss}


def _hooks(spec: Mapping[str, Any], training: LocalTraining) -> LocalHooks:
    return QFFLHooks()


register_hooks("qffl", _hooks)


def qffl_terms(
    delta: np.ndarray, loss: float, q: float, lipschitz: float
) -> tuple[np.ndarray, float]:
    """``(Delta_k, h_k)`` of one client from its ``delta = w_k - w`` and ``F_k(w)``."""
    dw = -lipschitz * delta.astype(np.float64)
    scaled = loss**q
    h = q * loss ** (q - 1) * float(dw @ dw) + lipschitz * scaled
    return scaled * dw, h


@dataclass
class QFFL(FedAvg):
    """q-FedAvg's server: ``w' = w - sum_k Delta_k / sum_k h_k``."""

    q: float = 1.0

    name = "qffl"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.q) and self.q >= 0):
            raise ConfigError(f"strategy.q must be a finite number >= 0, got {self.q}")
        if self.aggregator_factory is not None:
            raise ConfigError(
                "strategy.aggregator replaces the mean, but qffl combines updates by its own "
                "weights (F_k^q and h_k): use strategy.aggregator=mean with qffl"
            )

    @property
    def lipschitz(self) -> float:
        """``L = 1 / lr`` of the clients' local SGD."""
        return 1.0 / LocalTraining().updated(self.client_config).lr

    def fit_config(self, ctx: RoundContext) -> dict[str, Any]:
        return {**super().fit_config(ctx), "local": {"name": "qffl"}}

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        total = np.zeros(ctx.spec.size, np.float64)
        sums = {"h": 0.0, "count": 0}
        lipschitz = self.lipschitz

        def on_result(result: Result, vec: np.ndarray | None) -> None:
            loss = positive_metric(result, LOSS, ctx.round)
            if loss is None:
                return
            assert vec is not None  # fit results carry an update
            step, h = qffl_terms(vec, loss, self.q, lipschitz)
            total[:] += step
            sums["h"] += h
            sums["count"] += 1

        yield Exchange(self.configure_fit(ctx), [ctx.model], on_result)
        if sums["count"] < self.min_fit_clients or not sums["h"] > 0:
            log.error(
                "only %d usable updates, min_fit_clients is %d; the global model is unchanged",
                sums["count"],
                self.min_fit_clients,
            )
            return None
        # FedAvg's pseudo-gradient is -aggregate: the server step is w - sum Delta / sum h
        return (-total / sums["h"]).astype(np.float32)
