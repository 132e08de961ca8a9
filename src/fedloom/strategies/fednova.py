"""FedNova: normalised averaging for clients that do different amounts of local work.

Wang, Liu, Liang, Joshi, Poor. "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization." NeurIPS 2020, Section 4 (Algorithm 1 of its appendix).

When client ``i`` runs ``tau_i`` local steps and the server averages the deltas as FedAvg does,
clients that run more steps pull the global model towards their own objective: FedAvg converges
to the optimum of a surrogate weighted by ``n_i tau_i``, not of the true objective. FedNova divides
each client's delta by its amount of local work before averaging and rescales the average by the
effective number of steps:

    d_i     = (y_i - x) / ||a_i||_1                              (the client's normalised update)
    tau_eff = sum_i p_i ||a_i||_1,   p_i = n_i / sum_j n_j
    x'      = x + tau_eff * sum_i p_i d_i                        (server_lr = 1)

``a_i`` weights the ``tau_i`` gradients of local SGD in the delta: ``||a_i||_1 = tau_i`` for plain
SGD and ``(tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)`` with momentum ``rho`` (the
paper's Section 5). With equal ``tau_i`` FedNova is FedAvg.

The client half is a final hook: it uploads ``d_i`` and reports ``local_steps`` (``tau_i``) and
``fednova_norm`` (``||a_i||_1``) with its result; the server half sums ``p_i ||a_i||_1`` as the
results stream in. The server optimiser then steps on ``-tau_eff sum_i p_i d_i`` like FedAvg's
(momentum or Adam on the server is the paper's FedNova with server momentum, Section 5). Local Adam
has no such normalisation and is refused. A client's reported norm is taken as given: it scales
``tau_eff`` (bound the updates with ``strategy.max_update_norm``, but a client that lies about its
work moves ``tau_eff``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedloom.client.local import LocalHooks, LocalTraining, Tensors, register_hooks
from fedloom.core.summands import RuleOutput, SumPlan, Sums, Term, positive_metric, register_rule
from fedloom.errors import ConfigError
from fedloom.strategies.base import RoundContext
from fedloom.strategies.fedavg import FedAvg

log = logging.getLogger("fedloom")

NORM = "fednova_norm"
"""The fit metric that carries a client's ``||a_i||_1``."""


def work_norm(steps: torch.Tensor, momentum: float) -> torch.Tensor:
    """``||a_i||_1`` of ``steps`` local SGD steps with ``momentum`` (0: ``steps``)."""
    tau = torch.clamp(steps, min=1.0)
    if momentum == 0:
        return tau
    rho = momentum
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


class FedNovaHooks(LocalHooks):
    """Uploads ``delta / ||a_i||_1`` and reports ``tau_i`` and ``||a_i||_1``."""

    name = "fednova"

    def __init__(self, training: LocalTraining) -> None:
        if training.optimizer != "sgd":
            raise ConfigError(
                f"fednova normalises local SGD (with or without momentum); client.optimizer="
                f"{training.optimizer!r} has no such normalisation: use client.optimizer=sgd"
            )
        self.momentum = float(training.momentum)

    def final(
        self,
        delta: Tensors,
        shared: Mapping[str, Tensors],
        own: Mapping[str, Tensors],
        steps: torch.Tensor,
    ) -> tuple[list[Tensors], dict[str, Tensors]]:
        norm = work_norm(steps, self.momentum)
        return [{n: d / norm for n, d in delta.items()}], {}

    def metrics(self, steps: int, start_loss: float | None) -> dict[str, float]:
        norm = work_norm(torch.tensor(float(steps), dtype=torch.float64), self.momentum)
        return {"local_steps": float(steps), NORM: float(norm)}


def _hooks(spec: Mapping[str, Any], training: LocalTraining) -> LocalHooks:
    return FedNovaHooks(training)


register_hooks("fednova", _hooks)

WORK_UNIT = 1024.0
"""The secure channel quantises values within ``secure_aggregation.clip_range``; a client's work
travels divided by this, so up to ``clip_range * 1024`` local steps are summed exactly."""


def _contribution(
    upload: np.ndarray, metrics: Mapping[str, float], options: Mapping[str, Any]
) -> RuleOutput:
    """A client's normalised update and its work ``||a_i||_1`` (metric ``NORM``)."""
    norm = positive_metric(metrics, NORM)
    return [(upload, 1.0), (np.array([norm], np.float64), 1.0)]


register_rule("fednova", _contribution)


@dataclass
class FedNova(FedAvg):
    """FedNova's server: the mean of normalised updates, times ``tau_eff``."""

    name = "fednova"

    def private_refusal(self) -> str | None:
        return (
            "strategy.name=fednova sums each client's work ||a_i||_1 beside its update; clipping the "
            "update does not bound it, so noise calibrated to the clip would not cover it"
        )

    def __post_init__(self) -> None:
        training = LocalTraining().updated(self.client_config)
        FedNovaHooks(training)  # refuses local Adam before round 1

    def fit_config(self, ctx: RoundContext) -> dict[str, Any]:
        return {**super().fit_config(ctx), "local": {"name": "fednova"}}

    def sum_plan(self, ctx: RoundContext) -> SumPlan:
        """The weighted sums of the normalised updates and of the clients' work ``||a_i||_1``
        (in units of ``WORK_UNIT`` steps on the secure channel's fixed-point scale)."""
        return SumPlan(
            (Term("delta", ctx.spec.size), Term("work", 1, unit=WORK_UNIT)), rule="fednova"
        )

    def combine(self, sums: Sums, ctx: RoundContext) -> np.ndarray | None:
        aggregate, work = sums.mean(0), sums.mean(1)
        if aggregate is None or work is None:
            return None
        tau_eff = float(work[0])
        ctx.metrics["tau_eff"] = tau_eff
        return (tau_eff * aggregate.astype(np.float32)).astype(np.float32)
