"""SCAFFOLD: stochastic controlled averaging, with option II control variates.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh. "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning." ICML 2020, Algorithm 1.

Client drift on non-IID data is corrected with control variates: the server keeps ``c``, client
``i`` keeps ``c_i`` (client state, across rounds). Every local step follows the corrected gradient

    y <- y - lr * (g_i(y) - c_i + c)

and after ``K`` local steps the client sets (option II)

    c_i+ = c_i - c + (x - y) / (K * lr)

and uploads ``(delta_y, delta_c) = (y - x, c_i+ - c_i)`` as one vector of twice the model's size.
The server updates

    x <- x + server_lr * mean(delta_y)          (the server optimiser on -mean(delta_y))
    c <- c + |S| / N * mean(delta_c)

where ``S`` are the clients that returned and ``N`` all clients. ``c`` is strategy state (sent to
the clients as a blob each round, checkpointed with the model); ``c_i`` is client state.

Choices beyond the paper: ``mean(delta_y)`` is example-weighted as in FedAvg (the paper's
unweighted mean when clients are equally large), so that SCAFFOLD with zero control variates is
exactly FedAvg; ``mean(delta_c)`` is unweighted, as in the paper. ``K`` is each client's own number
of local steps. With momentum or Adam on the clients option II is a heuristic (the paper analyses
plain SGD).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from fedloom.client.local import LocalHooks, LocalTraining, Tensors, register_hooks
from fedloom.core.summands import SumPlan, Term
from fedloom.strategies.base import RoundContext, RoundPlan, StrategyState
from fedloom.strategies.fedavg import FedAvg

CONTROL = "control"
"""Blob role and strategy-state name of the server control variate ``c``."""
CLIENT_CONTROL = "scaffold_control"
"""Client-state group of the client control variate ``c_i``."""


class ScaffoldHooks(LocalHooks):
    """Corrects each local gradient by ``c - c_i`` and uploads ``(delta_y, delta_c)``."""

    name = "scaffold"
    blobs = (CONTROL,)
    state = (CLIENT_CONTROL,)
    upload_parts = 2
    has_grad = True

    def __init__(self, lr: float) -> None:
        self.lr = float(lr)

    def grad(
        self,
        grads: Tensors,
        params: Mapping[str, torch.Tensor],
        shared: Mapping[str, Tensors],
        own: Mapping[str, Tensors],
    ) -> Tensors:
        c, c_i = shared[CONTROL], own[CLIENT_CONTROL]
        return {n: g - c_i[n] + c[n] for n, g in grads.items()}

    def final(
        self,
        delta: Tensors,
        shared: Mapping[str, Tensors],
        own: Mapping[str, Tensors],
        steps: torch.Tensor,
    ) -> tuple[list[Tensors], dict[str, Tensors]]:
        c, c_i = shared[CONTROL], own[CLIENT_CONTROL]
        scale = 1.0 / (torch.clamp(steps, min=1.0) * self.lr)
        new = {n: c_i[n] - c[n] - d * scale for n, d in delta.items()}
        delta_c = {n: new[n] - c_i[n] for n in delta}
        return [delta, delta_c], {CLIENT_CONTROL: new}


def _hooks(spec: Mapping[str, Any], training: LocalTraining) -> LocalHooks:
    return ScaffoldHooks(training.lr)


register_hooks("scaffold", _hooks)


@dataclass
class Scaffold(FedAvg):
    """SCAFFOLD's server: the control variate ``c`` is strategy state."""

    name = "scaffold"

    def init_state(self, params: np.ndarray) -> StrategyState:
        return {CONTROL: np.zeros_like(params, dtype=np.float32)}

    def fit_config(self, ctx: RoundContext) -> dict[str, Any]:
        return {**super().fit_config(ctx), "local": {"name": "scaffold"}}

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        """The model deltas' weighted mean and the control deltas' unweighted mean, two sums of
        the round's channel."""
        size = ctx.spec.size
        control = ctx.blob(ctx.state[CONTROL])
        tasks = [
            replace(t, blobs={**t.blobs, CONTROL: control.digest}, upload=ctx.upload(parts=2))
            for t in self.configure_fit(ctx)
        ]
        plan = SumPlan((Term("delta", size), Term("control", size, weighted=False)))
        sums = yield from ctx.channel.sums(
            ctx, tasks, [ctx.model, control], plan, self.aggregator()
        )
        if not self.enough(sums):
            return None
        assert sums is not None
        aggregate, controls = sums.mean(0), sums.mean(1)
        if aggregate is None or controls is None:
            return None
        share = sums.count / max(ctx.num_clients, 1)
        ctx.state[CONTROL] = (ctx.state[CONTROL] + share * controls.astype(np.float32)).astype(
            np.float32
        )
        return aggregate.astype(np.float32)
