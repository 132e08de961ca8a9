"""q-FFL: fair resource allocation, trained with q-FedAvg.

Li, Sanjabi, Beirami, Smith. "Fair Resource Allocation in Federated Learning." ICLR 2020,
Algorithm 2 (q-FedAvg); checked against the authors' code (``flearn/trainers/qffedavg.py``).

q-FFL minimises ``f_q(w) = sum_k p_k / (q + 1) * F_k(w)^(q + 1)`` instead of FedAvg's
``sum_k p_k F_k(w)``, with ``p_k = n_k / n`` (each client's share of the training examples, as
in the paper's experiments): the larger ``q``, the more the clients with a high loss count, so
accuracy is spread more evenly across clients (``q = 0`` is FedAvg's objective). Each selected
client ``k`` runs local SGD from the global model ``w`` to ``w_k`` as in FedAvg and reports
``F_k(w)``, its mean loss on its training data at the global model (measured before training).
With ``L`` the Lipschitz estimate (``strategy.qffl_lipschitz``; by default ``1 / lr`` of the
clients' local SGD, as in the paper's code, where one learning rate is both):

    dw_k    = L (w - w_k)
    Delta_k = F_k(w)^q dw_k
    h_k     = q F_k(w)^(q - 1) ||dw_k||^2 + L F_k(w)^q
    w'      = w - sum_k c_k Delta_k / sum_k c_k h_k

The weights ``c_k`` estimate the sums over all clients with weights ``p_k`` from the round's
clients. The paper draws clients in proportion to ``n_k`` and sums them unweighted
(``strategy.sampling=size``: ``c_k = 1``); under uniform selection (``fixed`` or ``poisson``),
``c_k = n_k``. With ``q = 0`` the step is then FedAvg's: the ``n_k``-weighted mean of the local
models under uniform selection, their plain mean under size-proportional selection. The server
optimiser steps on ``sum_k c_k Delta_k / sum_k c_k h_k`` (``server_lr = 1``: the paper's step).

The client half is a hook that asks the trainers for ``F_k(w)`` and reports it as ``qffl_loss``;
the upload is the plain delta ``w_k - w``. A client with no positive finite ``qffl_loss`` is left
out of the round (the paper's code adds 1e-10 instead, which with ``q < 1`` would let a client
with a zero loss stall the step through ``h_k``). The sums stream, so no update is buffered; a
robust aggregator has no meaning here and is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedloom.client.local import LocalHooks, LocalTraining, register_hooks
from fedloom.core.selection import select_clients
from fedloom.core.summands import RuleOutput, SumPlan, Sums, Term, positive_metric, register_rule
from fedloom.core.task import FIT, MODEL, Task
from fedloom.errors import ConfigError
from fedloom.strategies.base import RoundContext
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


def _contribution(
    upload: np.ndarray, metrics: Mapping[str, float], options: Mapping[str, Any]
) -> RuleOutput:
    """A client's ``(Delta_k, h_k)`` from its update and its loss at the global model."""
    loss = positive_metric(metrics, LOSS)
    step, h = qffl_terms(upload, float(loss), float(options["q"]), float(options["lipschitz"]))
    return [(step, 1.0), (np.array([h]), 1.0)]


register_rule("qffl", _contribution)

H_UNITS = 256.0
"""``h_k`` travels in units of ``256 L 4^q`` on the secure channel's fixed-point scale."""


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
    """q-FedAvg's server: ``w' = w - sum_k c_k Delta_k / sum_k c_k h_k``."""

    q: float = 1.0
    lipschitz_estimate: float | None = None
    """``L``; None: ``1 / lr`` of the clients' local SGD."""

    name = "qffl"

    def private_refusal(self) -> str | None:
        return (
            "strategy.name=qffl scales each update by the client's loss F_k^q and adds h_k; clipping the "
            "update bounds neither, so noise calibrated to the clip would not cover them"
        )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.q) and self.q >= 0):
            raise ConfigError(f"strategy.q must be a finite number >= 0, got {self.q}")
        estimate = self.lipschitz_estimate
        if estimate is not None and not (math.isfinite(estimate) and estimate > 0):
            raise ConfigError(
                f"strategy.qffl_lipschitz must be a finite number > 0 (or null: 1 / client.lr), "
                f"got {estimate}"
            )
        if self.aggregator_factory is not None:
            raise ConfigError(
                "strategy.aggregator replaces the mean, but qffl combines updates by its own "
                "weights (F_k^q and h_k): use strategy.aggregator=mean with qffl"
            )

    @property
    def lipschitz(self) -> float:
        """``L``: ``lipschitz_estimate``, else ``1 / lr`` of the clients' local SGD."""
        if self.lipschitz_estimate is not None:
            return self.lipschitz_estimate
        return 1.0 / LocalTraining().updated(self.client_config).lr

    def fit_config(self, ctx: RoundContext) -> dict[str, Any]:
        return {**super().fit_config(ctx), "local": {"name": "qffl"}}

    def configure_fit(self, ctx: RoundContext) -> list[Task]:
        """Select by ``sampling`` (``size`` too) and give each client its fit task."""
        chosen = select_clients(
            self.sampling,
            ctx.eligible,
            self.fraction_fit,
            self.min_fit_clients,
            ctx.rng,
            ctx.num_examples,
        )
        config = self.fit_config(ctx)
        blobs = {MODEL: ctx.model.digest}
        return [Task(FIT, ctx.round, cid, config, blobs, ctx.upload()) for cid in chosen]

    def sum_plan(self, ctx: RoundContext) -> SumPlan:
        """The sums of ``Delta_k`` and ``h_k``, each client counted by ``n_k`` (by 1 when drawn
        in proportion to ``n_k``: ``sampling=size``). On the secure channel both travel in
        units of ``L * 4^q`` and ``H_UNITS`` times that (losses up to about 4 stay within the
        fixed-point range; a client whose value would not is refused, not clipped)."""
        weighted = self.sampling != "size"
        lipschitz = self.lipschitz
        unit = lipschitz * 4.0**self.q
        return SumPlan(
            (
                Term("Delta", ctx.spec.size, weighted, unit),
                # h_k grows with L^2 ||delta||^2: about 9 units of L * 4^q for the digits MLP
                Term("h", 1, weighted, H_UNITS * unit),
            ),
            rule="qffl",
            options={"q": self.q, "lipschitz": lipschitz},
        )

    def combine(self, sums: Sums, ctx: RoundContext) -> np.ndarray | None:
        h = float(sums.totals[1][0])
        if not h > 0:
            log.error(
                "round %d: the sum of h_k is %g, not positive; the model is unchanged", ctx.round, h
            )
            return None
        # FedAvg's pseudo-gradient is -aggregate: the server step is w - sum Delta / sum h
        return (-sums.totals[0] / h).astype(np.float32)
