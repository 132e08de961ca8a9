"""FedPer: federated learning with personalisation layers.

Arivazhagan, Aggarwal, Singh, Choudhary. "Federated Learning with Personalization Layers."
arXiv:1912.00818, 2019.

The model is split into base layers, shared and trained as in FedAvg, and personalisation layers
(``strategy.personal_layers``, typically the classifier head) that each client keeps to itself.
Each round, a selected client puts its own personalisation layers (client state; the global
model's initial values the first time) on top of the received base layers, runs local SGD on the
whole model, keeps the personalisation layers it ends with, and uploads the delta of the base
layers only: the fit task names the base layers (``UPLOAD_PARAMS``) and its upload holds their
values and nothing else, so the personalisation layers never leave the client and the upload is
the base layers' size. The server puts the base layers' delta back in place and averages it as
FedAvg does; it never changes the personalisation layers of the global model.

Federated evaluation scores each client's personalised model: the global base layers with its own
personalisation layers. A client that never trained holds none yet and is scored on the global
model, whose personalisation layers are the initial ones.

Layer names are parameter names (``net.2.weight``) or module prefixes (``net.2`` for its weight
and bias); a name that matches no parameter of the model is a ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fedloom.client.local import LocalHooks, LocalTraining, Tensors, register_hooks
from fedloom.core.params import ParamSpec
from fedloom.core.summands import SumPlan, Sums, Term
from fedloom.core.task import UPLOAD_PARAMS, Task, scatter
from fedloom.errors import ConfigError
from fedloom.strategies.base import RoundContext
from fedloom.strategies.fedavg import FedAvg

PERSONAL = "fedper"
"""Client-state group of the personalisation layers (``fedper/<parameter name>``)."""


def personal_names(spec: ParamSpec, layers: Sequence[str]) -> tuple[str, ...]:
    """The parameters of ``spec`` that ``layers`` name (each a parameter name or a module
    prefix), in ``spec`` order; ``ConfigError`` for a name that matches none."""
    unknown = [
        layer
        for layer in layers
        if not any(n == layer or n.startswith(layer + ".") for n in spec.names)
    ]
    if unknown:
        raise ConfigError(
            f"strategy.personal_layers names {unknown}, which match no parameter of the model; "
            f"its parameters are {list(spec.names)} (a module prefix such as "
            f"{spec.names[-1].rsplit('.', 1)[0]!r} names its weight and bias)"
        )
    return tuple(
        n for n in spec.names if any(n == layer or n.startswith(layer + ".") for layer in layers)
    )


class FedPerHooks(LocalHooks):
    """Trains from the client's own personalisation layers; uploads only the base layers."""

    name = "fedper"
    start_personal = True

    def __init__(self, personal: Sequence[str]) -> None:
        self.personal = tuple(personal)

    def personalize(
        self, spec: ParamSpec, global_vec: np.ndarray, state: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        own = {n: state[f"{PERSONAL}/{n}"] for n in self.personal if f"{PERSONAL}/{n}" in state}
        if not own:
            return None
        out = np.array(global_vec, dtype=np.float32, copy=True)
        for i, name in enumerate(spec.names):
            if name in own:
                off = spec.offsets[i]
                out[off : off + spec.sizes[i]] = np.asarray(own[name], np.float32).reshape(-1)
        return out

    def final(
        self,
        delta: Tensors,
        shared: Mapping[str, Tensors],
        own: Mapping[str, Tensors],
        steps: torch.Tensor,
    ) -> tuple[list[Tensors], dict[str, Tensors]]:
        base = {n: torch.zeros_like(d) if n in self.personal else d for n, d in delta.items()}
        kept = {n: shared["global"][n] + delta[n] for n in self.personal if n in delta}
        return [base], {PERSONAL: kept}


def _hooks(spec: Mapping[str, Any], training: LocalTraining) -> LocalHooks:
    layers = spec.get("personal")
    if not isinstance(layers, (list, tuple)) or not all(isinstance(n, str) for n in layers):
        raise ConfigError(f"fedper: 'personal' must be a list of parameter names, got {layers!r}")
    return FedPerHooks(layers)


register_hooks("fedper", _hooks)


@dataclass
class FedPer(FedAvg):
    """FedAvg on the base layers; ``personal_layers`` stay on the clients."""

    personal_layers: Sequence[str] = field(default_factory=tuple)

    name = "fedper"

    def __post_init__(self) -> None:
        if not self.personal_layers:
            raise ConfigError(
                "strategy.name=fedper needs strategy.personal_layers: the layers each client "
                "keeps to itself (e.g. [net.2], the classifier of the mlp model)"
            )

    def check(self, spec: ParamSpec, num_clients: int | None) -> None:
        if not self._base(spec):
            raise ConfigError(
                f"strategy.personal_layers {list(self.personal_layers)} name every parameter of "
                "the model: nothing would be shared; keep the personal layers to the head"
            )

    def _local(self, spec: ParamSpec) -> dict[str, Any]:
        return {"name": "fedper", "personal": list(personal_names(spec, self.personal_layers))}

    def _base(self, spec: ParamSpec) -> list[str]:
        personal = personal_names(spec, self.personal_layers)
        return [n for n in spec.names if n not in personal]

    def fit_config(self, ctx: RoundContext) -> dict[str, Any]:
        return {
            **super().fit_config(ctx),
            "local": self._local(ctx.spec),
            UPLOAD_PARAMS: self._base(ctx.spec),
        }

    def configure_fit(self, ctx: RoundContext) -> list[Task]:
        """FedAvg's fit tasks, whose upload is the base layers' values only."""
        if ctx.mask is not None:
            raise ConfigError(
                "strategy.name=fedper uploads the base layers, not a pruned model: turn pruning off"
            )
        size = int(ctx.spec.support(self._base(ctx.spec)).sum())
        return [
            replace(t, upload=replace(t.upload, size=size)) if t.upload is not None else t
            for t in super().configure_fit(ctx)
        ]

    def sum_plan(self, ctx: RoundContext) -> SumPlan:
        """The example-weighted sum of the base layers' updates (the upload)."""
        return SumPlan((Term("base", int(ctx.spec.support(self._base(ctx.spec)).sum())),))

    def combine(self, sums: Sums, ctx: RoundContext) -> np.ndarray | None:
        """The base layers' mean update, zero on the personal layers (which stay on the
        clients)."""
        mean = sums.mean(0)
        if mean is None:
            return None
        return scatter(mean.astype(np.float32), ctx.spec.support(self._base(ctx.spec)))

    def evaluate_config(self, ctx: RoundContext) -> dict[str, Any]:
        return {**super().evaluate_config(ctx), "local": self._local(ctx.spec)}
