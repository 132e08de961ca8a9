"""FedProx: FedAvg with a proximal term in every client's local objective.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous Networks."
MLSys 2020.

Each client minimises ``h_k(w) = F_k(w) + mu/2 * ||w - w_global||^2`` instead of its local loss
``F_k``: the proximal term keeps local models of clients with very different data (or different
amounts of local work) from drifting far from the global model. Its gradient adds
``mu * (w - w_global)`` to every local step. ``mu = 0`` is FedAvg. The server side is FedAvg's
example-weighted mean of client models.

The client half is a loss hook (``FedProxHooks``), so FedProx clients train in the vectorized
engine's cohorts like plain ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedloom.client.local import LocalHooks, LocalTraining, Tensors, register_hooks
from fedloom.errors import ConfigError
from fedloom.strategies.base import RoundContext
from fedloom.strategies.fedavg import FedAvg


class FedProxHooks(LocalHooks):
    """Adds ``mu/2 * ||w - w_global||^2`` to the minibatch loss."""

    name = "fedprox"
    has_loss = True

    def __init__(self, proximal_mu: float) -> None:
        if not proximal_mu >= 0:
            raise ConfigError(f"fedprox: proximal_mu must be >= 0, got {proximal_mu}")
        self.proximal_mu = float(proximal_mu)

    def loss(
        self,
        params: Mapping[str, torch.Tensor],
        shared: Mapping[str, Tensors],
        own: Mapping[str, Tensors],
    ) -> torch.Tensor:
        anchor = shared["global"]
        squares = [((params[n] - anchor[n]) ** 2).sum() for n in params]
        return 0.5 * self.proximal_mu * torch.stack(squares).sum()


def _hooks(spec: Mapping[str, Any], training: LocalTraining) -> LocalHooks:
    return FedProxHooks(float(spec.get("proximal_mu", 0.0)))


register_hooks("fedprox", _hooks)


@dataclass
class FedProx(FedAvg):
    """FedAvg whose clients add the proximal term ``mu/2 ||w - w_global||^2``."""

    proximal_mu: float = 0.01

    name = "fedprox"

    def __post_init__(self) -> None:
        FedProxHooks(self.proximal_mu)  # validates mu

    def fit_config(self, ctx: RoundContext) -> dict[str, Any]:
        local = {"name": "fedprox", "proximal_mu": self.proximal_mu}
        return {**super().fit_config(ctx), "local": local}
