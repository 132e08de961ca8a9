"""Local training, written once: hyperparameters, the optimiser steps, and the algorithm hooks.

Local training of one client is a loop of small pure functions (in the spirit of fedjax's
``client_init`` / ``client_step`` / ``client_final``). ``TorchClient`` runs them eagerly for one
client; the vectorized engine runs the very same functions for a whole cohort, with ``vmap`` for
the hooks and the element-wise optimiser steps applied to stacked ``(clients, *shape)`` tensors:

    for each minibatch:
        loss  = data loss + hooks.loss(params, shared, own)          (FedProx's proximal term)
        grads = hooks.grad(d loss / d params, params, shared, own)   (SCAFFOLD's  - c_i + c)
        optimizer.step(params, grads, t)                             (SGD with momentum, Adam)
    parts, new_state = hooks.final(params - global, shared, own, steps)  (what is uploaded)

Tensors are dicts ``{parameter name: tensor}`` over the model's trainable parameters. ``shared``
holds what every client of a task receives (``"global"``: the global model; one entry per extra
blob the hooks ask for, such as SCAFFOLD's ``"control"``); ``own`` holds this client's state groups
(zero-initialised on first use). Hooks must not mix clients: every reduction is over one client's
tensors, so ``vmap`` over the cohort gives each client exactly its eager numbers.

Hooks are chosen by name in the task config (``config["local"] = {"name": "fedprox", ...}``) from a
fixed registry, never by importing a module the server names (a deployment client must not run
code chosen by the server).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch.func import functional_call, grad_and_value, vmap

from fedloom.config import ClientConfig
from fedloom.core.params import ParamSpec
from fedloom.errors import ConfigError

Tensors = dict[str, torch.Tensor]
TensorList = list[torch.Tensor]


@dataclass(frozen=True)
class LocalTraining:
    """Local training hyperparameters; a task's config may override any of them per round."""

    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.05
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    dp_sgd_max_grad_norm: float = 0.0
    """DP-SGD's per-example clip norm; 0 trains without DP-SGD."""
    dp_sgd_noise_multiplier: float = 0.0

    @property
    def dp_sgd(self) -> bool:
        return self.dp_sgd_max_grad_norm > 0

    @classmethod
    def from_config(cls, client: ClientConfig) -> LocalTraining:
        """The hyperparameters of a run config's ``client`` section."""
        return cls(
            epochs=client.epochs,
            batch_size=client.batch_size,
            lr=client.lr,
            optimizer=client.optimizer,
            momentum=client.momentum,
            weight_decay=client.weight_decay,
        )

    def updated(self, config: Mapping[str, Any]) -> LocalTraining:
        keys = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay")
        changed = {k: config[k] for k in keys if k in config}
        dp_sgd = config.get("dp_sgd")
        if dp_sgd:
            changed["dp_sgd_max_grad_norm"] = float(dp_sgd["max_grad_norm"])
            changed["dp_sgd_noise_multiplier"] = float(dp_sgd["noise_multiplier"])
        return replace(self, **changed)


def client_seed(seed: int, round_num: int, client_id: int) -> int:
    """A 63-bit seed for one client in one round, independent of every other client's."""
    state = np.random.SeedSequence([seed, round_num, client_id]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def finetune_seed(seed: int, round_num: int, client_id: int) -> int:
    """The seed of a client's fine-tuning before evaluation (``eval.finetune_epochs``) in one
    round: apart from the round's training seed (``client_seed``)."""
    state = np.random.SeedSequence([seed, round_num, client_id, 0x66696E65]).generate_state(
        2, np.uint32
    )
    return int((int(state[0]) << 31) ^ int(state[1]))


def local_steps(n: int, training: LocalTraining) -> int:
    """Optimiser steps of one client with ``n`` examples: ``epochs * ceil(n / batch_size)``."""
    return training.epochs * -(-n // training.batch_size)


# -- DP-SGD ------------------------------------------------------------------------------------
#
# Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang. "Deep Learning with Differential
# Privacy." CCS 2016, Algorithm 1: each example's gradient is clipped to L2 norm C (over all the
# model's tensors together), the clipped gradients are summed, Gaussian noise N(0, (sigma C)^2) is
# added to every coordinate, and the sum is divided by the batch size. Written for one client's
# minibatch; the vectorized engine runs the same functions under ``vmap`` over its cohort (the
# per-example ``vmap`` then runs inside the per-client one).

DP_SGD_NORM_EPS = 1e-6
"""Added to each per-example norm before dividing, as Opacus does."""


def per_example_grads(
    module: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    consts: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, Tensors]:
    """Per-example losses ``(b,)`` and gradients ``{name: (b, *shape)}`` of ``module`` at
    ``params`` (its trainable tensors, with ``consts`` or else the module's own tensors for the
    rest), each example run as a batch of one through ``loss_fn``."""
    fixed = dict(consts or {})

    def one(p: Mapping[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, (dict(p), fixed), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    grads, losses = vmap(grad_and_value(one), in_dims=(None, 0, 0))(dict(params), x, y)
    return losses, grads


def clip_and_noise(
    grads: Tensors,
    weights: torch.Tensor,
    max_grad_norm: float,
    noise: Mapping[str, torch.Tensor],
    noise_multiplier: float,
) -> Tensors:
    """DP-SGD's gradient: ``(sum_i w_i clip(g_i) + sigma C xi) * w`` with ``w_i`` the examples'
    weights (``1 / batch size``, 0 for padding), ``w`` their largest, and ``xi`` the standard-normal
    ``noise``, one draw per tensor."""
    flat = [g.reshape(g.shape[0], -1) for g in grads.values()]
    norms = torch.sqrt(sum(f.pow(2).sum(1) for f in flat))  # type: ignore[arg-type]
    factors = (max_grad_norm / (norms + DP_SGD_NORM_EPS)).clamp(max=1.0) * weights
    scale = weights.max() * (noise_multiplier * max_grad_norm)
    return {
        name: torch.tensordot(factors, g, dims=1) + scale * noise[name] for name, g in grads.items()
    }


def noise_generator(seed: int) -> torch.Generator:
    """DP-SGD's noise stream of one client in one round (``seed`` from ``client_seed``), apart
    from the minibatch order's."""
    state = np.random.SeedSequence([seed, 0x6470736764]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int((int(state[0]) << 31) ^ int(state[1])))


# -- optimiser steps ---------------------------------------------------------------------------
#
# Each step is the element-wise recipe of ``torch.optim.SGD`` and ``torch.optim.Adam`` (their
# single-tensor CPU implementations) written with ``torch._foreach_*`` kernels. Element-wise, so the
# same code updates one client's tensors or a cohort's stacked ``(clients, *shape)`` tensors, and
# no client's row ever mixes with another's. The state lists are sliced by the caller when only the
# leading block of a cohort is still training.


class LocalOptimizer:
    """Updates ``params`` in place from ``grads`` at local step ``t`` (0-based)."""

    def step(self, params: TensorList, grads: TensorList, t: int) -> None:
        raise NotImplementedError

    @staticmethod
    def state_rows(training: LocalTraining) -> int:
        """Parameter-sized buffers per client (for memory budgets)."""
        if training.optimizer == "adam":
            return 2
        return 1 if training.momentum != 0 else 0


def _active(state: TensorList, params: TensorList) -> TensorList:
    """The part of ``state`` that ``params`` updates: a cohort trains its leading block of clients
    (``params`` are views of those rows), one client's tensors are used whole."""
    return [
        s if s.shape == p.shape else s[: p.shape[0]] for s, p in zip(state, params, strict=True)
    ]


class SGD(LocalOptimizer):
    """``torch.optim.SGD`` with momentum and L2 weight decay (no dampening, no Nesterov).

    The momentum buffer starts as a copy of the first gradient, as in PyTorch (Sutskever et al.,
    "On the importance of initialization and momentum in deep learning", ICML 2013).
    """

    def __init__(self, like: Sequence[torch.Tensor], lr: float, momentum: float, wd: float) -> None:
        self.lr, self.momentum, self.weight_decay = lr, momentum, wd
        self.buf = [torch.empty_like(p) for p in like] if momentum != 0 else None

    def step(self, params: TensorList, grads: TensorList, t: int) -> None:
        if self.weight_decay != 0:
            grads = list(torch._foreach_add(grads, params, alpha=self.weight_decay))
        if self.buf is not None:
            buf = _active(self.buf, params)
            if t == 0:
                torch._foreach_copy_(buf, grads)
            else:
                torch._foreach_mul_(buf, self.momentum)
                torch._foreach_add_(buf, grads)
            grads = buf
        torch._foreach_add_(params, grads, alpha=-self.lr)


class Adam(LocalOptimizer):
    """``torch.optim.Adam`` with its defaults (betas 0.9/0.999, eps 1e-8) and L2 weight decay.

    Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015. Every client that
    takes step ``t`` has taken exactly ``t + 1`` steps, so the bias corrections are scalars.
    """

    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def __init__(self, like: Sequence[torch.Tensor], lr: float, wd: float) -> None:
        self.lr, self.weight_decay = lr, wd
        self.exp_avg = [torch.zeros_like(p) for p in like]
        self.exp_avg_sq = [torch.zeros_like(p) for p in like]

    def step(self, params: TensorList, grads: TensorList, t: int) -> None:
        exp_avg, exp_avg_sq = _active(self.exp_avg, params), _active(self.exp_avg_sq, params)
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


def make_local_optimizer(training: LocalTraining, like: Sequence[torch.Tensor]) -> LocalOptimizer:
    """The optimiser of ``training`` for tensors shaped like ``like`` (one client or a cohort)."""
    if training.optimizer == "sgd":
        return SGD(like, training.lr, training.momentum, training.weight_decay)
    if training.optimizer == "adam":
        return Adam(like, training.lr, training.weight_decay)
    raise ValueError(f"unknown optimizer {training.optimizer!r}; choose 'sgd' or 'adam'")


# -- hooks ---------------------------------------------------------------------------------------


class LocalHooks:
    """Plain local training (FedAvg's ClientUpdate): no extra loss, raw gradients, upload the delta.

    Subclasses override what their algorithm changes and declare what it needs:

    - ``blobs``: extra payloads the task sends (server-side state such as a control variate), each
      a flat vector in the model's parameter order, seen by the hooks as ``shared[role]``;
    - ``state``: client state groups, each parameter-shaped and zero on first use, seen as
      ``own[group]`` and written back from ``final``;
    - ``upload_parts``: how many model-sized vectors ``final`` returns (they are concatenated).

    ``has_loss`` and ``has_grad`` tell the trainers to call ``loss`` and ``grad`` at all (plain
    training pays nothing for them).
    """

    name: ClassVar[str] = "fedavg"
    blobs: ClassVar[tuple[str, ...]] = ()
    state: ClassVar[tuple[str, ...]] = ()
    upload_parts: ClassVar[int] = 1
    has_loss: ClassVar[bool] = False
    has_grad: ClassVar[bool] = False
    start_loss: ClassVar[bool] = False
    """Measure the client's mean loss on its training data at the global model, before training,
    and pass it to ``metrics`` (q-FFL's ``F_k(w)``)."""

    def loss(
        self,
        params: Mapping[str, torch.Tensor],
        shared: Mapping[str, Tensors],
        own: Mapping[str, Tensors],
    ) -> torch.Tensor:
        """A term added to one client's minibatch loss (a scalar tensor)."""
        raise NotImplementedError

    def grad(
        self,
        grads: Tensors,
        params: Mapping[str, torch.Tensor],
        shared: Mapping[str, Tensors],
        own: Mapping[str, Tensors],
    ) -> Tensors:
        """The gradient the optimiser steps on, from the gradient of the (hooked) loss."""
        raise NotImplementedError

    def final(
        self,
        delta: Tensors,
        shared: Mapping[str, Tensors],
        own: Mapping[str, Tensors],
        steps: torch.Tensor,
    ) -> tuple[list[Tensors], dict[str, Tensors]]:
        """The upload (``upload_parts`` parameter dicts) and the new client state groups, from the
        trained ``delta = local - global`` after ``steps`` optimiser steps (a scalar tensor)."""
        return [delta], {}

    def metrics(self, steps: int, start_loss: float | None) -> dict[str, float]:
        """Scalars the client reports with its result after ``steps`` optimiser steps
        (``start_loss``: see the class attribute, else None); none for plain training."""
        return {}

    # -- personalisation (FedPer, Ditto): numpy-level, per client, outside any vmap -------------

    start_personal: ClassVar[bool] = False
    """Local training starts from ``personalize``'s model instead of the global one (FedPer)."""

    def personalize(
        self, spec: ParamSpec, global_vec: np.ndarray, state: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        """This client's personalised model (flat, ``spec`` order) from the global model and its
        state: what federated evaluation scores, and where training starts when
        ``start_personal``. None: the global model itself (plain training)."""
        return None

    def personal_pass(self) -> LocalHooks | None:
        """The hooks of a second local pass after the first (Ditto's personal model): it starts
        from ``personalize``'s model (or the global one), trains on the same minibatches, uploads
        nothing, and ``keep_personal`` turns the model it ends with into client state. None: no
        second pass."""
        return None

    def keep_personal(self, spec: ParamSpec, personal: np.ndarray) -> dict[str, np.ndarray]:
        """The client-state entries that hold the personal pass's trained model (flat)."""
        raise NotImplementedError

    def key(self) -> tuple[Any, ...]:
        """Hooks with equal keys compute the same functions (clients that share them can train in
        one vectorised cohort)."""
        return (type(self), tuple(sorted(vars(self).items())))


HooksFactory = Callable[[Mapping[str, Any], LocalTraining], LocalHooks]
HOOKS: dict[str, HooksFactory] = {}
# Built-in algorithms live beside their server half (one file per algorithm); they are imported
# when first named, so the client layer does not import the strategies at start-up.
_BUILTIN = {
    "fedprox": "fedloom.strategies.fedprox",
    "fedper": "fedloom.strategies.fedper",
    "ditto": "fedloom.strategies.ditto",
    "scaffold": "fedloom.strategies.scaffold",
    "fednova": "fedloom.strategies.fednova",
    "qffl": "fedloom.strategies.qffl",
}


def register_hooks(name: str, factory: HooksFactory) -> None:
    """Make ``config["local"] = {"name": name, ...}`` build hooks with ``factory(spec, training)``."""
    HOOKS[name] = factory


def hooks_for(config: Mapping[str, Any], training: LocalTraining) -> LocalHooks:
    """The hooks a task's config names (plain local training when it names none)."""
    spec = config.get("local")
    if not spec:
        return LocalHooks()
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"config 'local' must be a mapping with a 'name', got {spec!r}")
    name = spec["name"]
    if name not in HOOKS and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in HOOKS:
        raise ConfigError(
            f"unknown local training {name!r}; choose one of {sorted({*HOOKS, *_BUILTIN})}"
        )
    return HOOKS[name](spec, training)


# -- between flat vectors and the hooks' parameter dicts ---------------------------------------


def named_views(spec: ParamSpec, names: Sequence[str], vec: torch.Tensor) -> Tensors:
    """Views of the ``names`` entries of flat ``vec`` (``(size,)`` for one client, or
    ``(clients, size)`` for a cohort), each in its parameter's shape."""
    index = {n: i for i, n in enumerate(spec.names)}
    lead = tuple(vec.shape[:-1])
    out: Tensors = {}
    for name in names:
        i = index[name]
        off, size = spec.offsets[i], spec.sizes[i]
        out[name] = vec[..., off : off + size].reshape(*lead, *spec.shapes[i])
    return out


def flat_part(
    spec: ParamSpec, part: Mapping[str, torch.Tensor], base: torch.Tensor
) -> torch.Tensor:
    """``base`` (a flat vector or ``(clients, size)`` rows, copied) with the entries of ``part``
    written in; parameters a part does not name keep ``base``'s values."""
    out = base.clone()
    for name, view in named_views(spec, list(part), out).items():
        view.copy_(part[name])
    return out


def state_views(
    groups: Sequence[str], spec: ParamSpec, names: Sequence[str], state: Mapping[str, np.ndarray]
) -> dict[str, Tensors]:
    """Client state groups as parameter dicts (``"group/name"`` arrays; zeros where missing)."""
    out: dict[str, Tensors] = {}
    index = {n: i for i, n in enumerate(spec.names)}
    for group in groups:
        out[group] = {}
        for name in names:
            arr = state.get(f"{group}/{name}")
            shape = spec.shapes[index[name]]
            out[group][name] = (
                torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(shape)
                if arr is not None
                else torch.zeros(shape)
            )
    return out


def state_arrays(groups: Mapping[str, Tensors]) -> dict[str, np.ndarray]:
    """The inverse of ``state_views``: ``{"group/name": array}``."""
    return {
        f"{group}/{name}": t.detach().numpy().astype(np.float32, copy=True)
        for group, tensors in groups.items()
        for name, t in tensors.items()
    }
