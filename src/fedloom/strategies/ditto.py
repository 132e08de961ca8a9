"""Ditto: fair and robust federated learning through personalisation.

Li, Hu, Beirami, Smith. "Ditto: Fair and Robust Federated Learning Through Personalization."
ICML 2021, Algorithm 1.

Every client keeps a personal model ``v_k`` (client state) besides taking part in training the
global model ``w``. In a round, a selected client

1. runs FedAvg's local SGD from the global model ``w^t`` and uploads its delta (the global model
   is trained exactly as FedAvg trains it);
2. runs the same number of local steps, on the same minibatches, on its personal model with the
   regularised objective ``F_k(v) + lambda/2 * ||v - w^t||^2``, so each step is
   ``v <- v - lr * (grad F_k(v) + lambda * (v - w^t))``, and keeps the ``v_k`` it ends with.

``lambda`` (``strategy.lambda``) interpolates between local training (0) and the global model
(large). ``v_k`` starts as the global model the client first receives (the paper starts it at
``w^0``; with partial participation the two differ only for clients that join late). The personal
model never leaves the client; federated evaluation scores it (a client that never trained is
scored on the global model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedloom.client.local import LocalHooks, LocalTraining, register_hooks
from fedloom.core.params import ParamSpec
from fedloom.errors import ConfigError
from fedloom.strategies.base import RoundContext
from fedloom.strategies.fedavg import FedAvg
from fedloom.strategies.fedprox import FedProxHooks

PERSONAL = "ditto/personal"
"""Client-state key of the personal model ``v_k`` (flat, in the model's parameter order)."""


class DittoHooks(LocalHooks):
    """FedAvg's local training of the global model, then the personal model's pass."""

    name = "ditto"

    def __init__(self, lam: float) -> None:
        if not (math.isfinite(lam) and lam >= 0):
            raise ConfigError(f"strategy.lambda must be a finite number >= 0, got {lam}")
        self.lam = float(lam)

    def personalize(
        self, spec: ParamSpec, global_vec: np.ndarray, state: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        personal = state.get(PERSONAL)
        if personal is None or personal.shape != (spec.size,):
            return None
        return np.asarray(personal, np.float32)

    def personal_pass(self) -> LocalHooks:
        # the gradient of lambda/2 ||v - w^t||^2 is FedProx's proximal term, anchored at w^t
        return FedProxHooks(self.lam)

    def keep_personal(self, spec: ParamSpec, personal: np.ndarray) -> dict[str, np.ndarray]:
        return {PERSONAL: np.asarray(personal, np.float32)}


def _hooks(spec: Mapping[str, Any], training: LocalTraining) -> LocalHooks:
    return DittoHooks(float(spec.get("lambda", 0.0)))


register_hooks("ditto", _hooks)


@dataclass
class Ditto(FedAvg):
    """FedAvg for the global model; each client also trains its personal model."""

    ditto_lambda: float = 0.1

    name = "ditto"

    def __post_init__(self) -> None:
        DittoHooks(self.ditto_lambda)  # validates lambda

    def _local(self) -> dict[str, Any]:
        return {"name": "ditto", "lambda": self.ditto_lambda}

    def fit_config(self, ctx: RoundContext) -> dict[str, Any]:
        return {**super().fit_config(ctx), "local": self._local()}

    def evaluate_config(self, ctx: RoundContext) -> dict[str, Any]:
        return {**super().evaluate_config(ctx), "local": self._local()}
