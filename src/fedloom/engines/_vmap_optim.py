"""Per-client optimisers over a stacked cohort: each parameter is a ``(clients, *shape)`` tensor.

Each update is the element-wise recipe of ``torch.optim.SGD`` and ``torch.optim.Adam`` (the
single-tensor implementations PyTorch uses on CPU; see
https://pytorch.org/docs/stable/generated/torch.optim.SGD.html and
https://pytorch.org/docs/stable/generated/torch.optim.Adam.html), applied to all clients at once with
``torch._foreach_*`` kernels. Every operation is element-wise, so no client's row ever mixes with
another's, and anything that would reduce (a norm for clipping) must reduce over each row alone.

Clients of a cohort are sorted by their number of local steps, longest first, so the clients still
training at step ``t`` are always a leading block of rows ``[:active]``. A step touches only that
block: the parameters and optimiser state of clients that have finished stay exactly as they were,
with no masking arithmetic and no wasted work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from fedloom.client.torch_client import LocalTraining

Tensors = list[torch.Tensor]


class CohortOptimizer(Protocol):
    """Updates ``params`` (the active rows) in place from ``grads`` at local step ``t``."""

    def step(self, params: Tensors, grads: Tensors, t: int) -> None: ...


def _rows(state: Tensors, active: int) -> Tensors:
    return [s[:active] for s in state]


class CohortSGD:
    """``torch.optim.SGD`` with momentum and L2 weight decay (no dampening, no Nesterov).

    The momentum buffer starts as a copy of the first gradient, as in PyTorch (Sutskever et al.,
    "On the importance of initialization and momentum in deep learning", ICML 2013).
    """

    def __init__(self, like: Sequence[torch.Tensor], lr: float, momentum: float, wd: float) -> None:
        self.lr, self.momentum, self.weight_decay = lr, momentum, wd
        self.buf = [torch.empty_like(p) for p in like] if momentum != 0 else None

    def step(self, params: Tensors, grads: Tensors, t: int) -> None:
        if self.weight_decay != 0:
            grads = list(torch._foreach_add(grads, params, alpha=self.weight_decay))
        if self.buf is not None:
            buf = _rows(self.buf, params[0].shape[0])
            if t == 0:
                torch._foreach_copy_(buf, grads)
            else:
                torch._foreach_mul_(buf, self.momentum)
                torch._foreach_add_(buf, grads)
            grads = buf
        torch._foreach_add_(params, grads, alpha=-self.lr)


class CohortAdam:
    """``torch.optim.Adam`` with its defaults (betas 0.9/0.999, eps 1e-8) and L2 weight decay.

    Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015. Every active client has
    taken exactly ``t + 1`` steps, so the bias corrections are shared scalars.
    """

    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def __init__(self, like: Sequence[torch.Tensor], lr: float, wd: float) -> None:
        self.lr, self.weight_decay = lr, wd
        self.exp_avg = [torch.zeros_like(p) for p in like]
        self.exp_avg_sq = [torch.zeros_like(p) for p in like]

    def step(self, params: Tensors, grads: Tensors, t: int) -> None:
        active = params[0].shape[0]
        exp_avg, exp_avg_sq = _rows(self.exp_avg, active), _rows(self.exp_avg_sq, active)
        if self.weight_decay != 0:
            grads = list(torch._foreach_add(grads, params, alpha=self.weight_decay))
        torch._foreach_lerp_(exp_avg, grads, 1 - self.beta1)
        torch._foreach_mul_(exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - self.beta2)
        step = t + 1
        step_size = self.lr / (1 - self.beta1**step)
        bias_correction2_sqrt = (1 - self.beta2**step) ** 0.5
        denom = list(torch._foreach_sqrt(exp_avg_sq))
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, value=-step_size)


def make_cohort_optimizer(training: LocalTraining, like: Sequence[torch.Tensor]) -> CohortOptimizer:
    """The stacked counterpart of ``fedloom.client.torch_client.make_optimizer``."""
    if training.optimizer == "sgd":
        return CohortSGD(like, training.lr, training.momentum, training.weight_decay)
    if training.optimizer == "adam":
        return CohortAdam(like, training.lr, training.weight_decay)
    raise ValueError(f"unknown optimizer {training.optimizer!r}; choose 'sgd' or 'adam'")


def optimizer_state_rows(training: LocalTraining) -> int:
    """How many parameter-sized buffers per client the optimiser keeps (for the memory budget)."""
    if training.optimizer == "adam":
        return 2
    return 1 if training.momentum != 0 else 0
