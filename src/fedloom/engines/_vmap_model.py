"""The functional form of a TorchClient's model for the vectorized engine: which tensors train,
how a batch of clients computes its per-client losses and gradients with ``torch.func``, and the
one-off probe that decides whether a model may be vectorised at all.

The model is written for one client and vectorised from outside (the equinox mindset): every
trainable tensor is stacked to ``(clients, *shape)``, one copy per client, and every local step is a
single ``vmap(functional_call)`` forward over all clients' minibatches followed by one backward
pass. Clients never interact in that graph, so the gradient of the summed per-client losses with
respect to a client's copy is exactly that client's gradient (the "model ensembling" recipe of
https://pytorch.org/tutorials/intermediate/ensembling.html and ``torch.func.stack_module_state``).
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from fedloom.client.local import LocalTraining, Tensors, clip_and_noise, per_example_grads
from fedloom.client.torch_client import LossFn, default_loss
from fedloom.core.params import ParamSpec

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_REGRESSION_LOSS_CODE = default_loss("regression").__code__
_ARCHITECTURES: weakref.WeakKeyDictionary[nn.Module, Hashable] = weakref.WeakKeyDictionary()


class NotVectorizable(Exception):
    """The model, loss or data cannot be trained with ``vmap``; the message says why."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for one-line warnings."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def architecture_key(model: nn.Module) -> Hashable:
    """Models with equal keys compute the same function of the same named parameters."""
    key = _ARCHITECTURES.get(model)
    if key is None:
        params = tuple(
            (name, tuple(p.shape), p.dtype, p.requires_grad)
            for name, p in model.named_parameters(remove_duplicate=False)
        )
        buffers = tuple((name, tuple(b.shape), b.dtype) for name, b in model.named_buffers())
        key = (type(model), repr(model), params, buffers)
        _ARCHITECTURES[model] = key
    return key


def loss_key(loss_fn: LossFn) -> Hashable:
    """Loss functions with equal keys compute the same loss (each TorchClient may make its own)."""
    if isinstance(loss_fn, nn.Module):
        return (type(loss_fn), repr(loss_fn))
    if isinstance(loss_fn, types.FunctionType) and not loss_fn.__closure__:
        # Same code, no captured state: the same loss (default_loss makes a new lambda per client).
        return (loss_fn.__code__, loss_fn.__defaults__, loss_fn.__kwdefaults__)
    try:
        hash(loss_fn)
    except TypeError:
        return id(loss_fn)
    return loss_fn


def per_sample_loss(loss_fn: LossFn) -> PerSampleLoss:
    """``loss_fn`` as a vector of per-sample losses; the engine weighs and sums them per client.

    The defaults of ``TorchClient`` get their ``reduction="none"`` form; any other loss is vmapped
    over single samples, which is right for every loss that is a mean over samples (the probe
    checks it against the eager loss).
    """
    if loss_fn is nn.functional.cross_entropy:
        return functools.partial(nn.functional.cross_entropy, reduction="none")
    if getattr(loss_fn, "__code__", None) is _REGRESSION_LOSS_CODE:

        def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            err = nn.functional.mse_loss(out.reshape(y.shape), y, reduction="none")
            return err.reshape(len(y), -1).mean(1)

        return mse

    def one(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(out.unsqueeze(0), y.unsqueeze(0))

    return vmap(one)


def static_check(model: nn.Module) -> None:
    """Raise NotVectorizable for layers whose training cannot be vmapped per client."""
    for name, module in model.named_modules():
        where = f"layer {name!r} ({type(module).__name__})" if name else type(module).__name__
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            raise NotVectorizable(f"{where} updates running statistics (buffers) in training")
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            raise NotVectorizable(
                f"{where} draws random masks from the global RNG, which vmap cannot split per client"
            )
    if len(list(model.named_parameters(remove_duplicate=False))) != len(
        list(model.named_parameters())
    ):
        raise NotVectorizable("the model ties parameters (one tensor under two names)")


@dataclass
class CohortModel:
    """The functional form of a model: which entries of the global vector train, and how.

    ``trainable`` lists, in ``spec`` order, the entries that are ``requires_grad`` parameters; the
    others (floating buffers, frozen parameters) are shared unbatched constants whose delta is zero.
    """

    module: nn.Module
    spec: ParamSpec
    trainable: tuple[int, ...]
    loss: PerSampleLoss
    eager_loss: LossFn

    @classmethod
    def build(cls, module: nn.Module, spec: ParamSpec, loss_fn: LossFn) -> CohortModel:
        static_check(module)
        state = module.state_dict()
        floating = tuple(k for k, v in state.items() if v.is_floating_point())
        if floating != spec.names:
            raise NotVectorizable("the global params do not match the model's floating state")
        grads = {n for n, p in module.named_parameters() if p.requires_grad}
        trainable = tuple(i for i, n in enumerate(spec.names) if n in grads)
        if not trainable:
            raise NotVectorizable("the model has no trainable parameters")
        if any(dt != "<f4" for dt in spec.dtypes) or any(
            v.dtype != torch.float32 for k, v in state.items() if k in spec.names
        ):
            raise NotVectorizable("the model is not float32 throughout")
        return cls(module, spec, trainable, per_sample_loss(loss_fn), loss_fn)

    @functools.cached_property
    def _layout(self) -> list[tuple[str, tuple[int, ...], int, int, int]]:
        """(name, shape, offset in the global vector, offset in the trainable vector, size)."""
        out, acc = [], 0
        for i in self.trainable:
            size = self.spec.sizes[i]
            out.append((self.spec.names[i], self.spec.shapes[i], self.spec.offsets[i], acc, size))
            acc += size
        return out

    @property
    def names(self) -> list[str]:
        """Names of the trainable tensors, in spec order."""
        return [name for name, *_ in self._layout]

    @property
    def num_trainable(self) -> int:
        return sum(size for *_, size in self._layout)

    @property
    def all_trainable(self) -> bool:
        return len(self.trainable) == len(self.spec.names)

    def split(self, global_vec: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The trainable part of the global vector, and the constants by name."""
        keep = set(self.trainable)
        consts = {
            name: global_vec[off : off + size].view(shape)
            for i, (name, shape, off, size) in enumerate(
                zip(
                    self.spec.names,
                    self.spec.shapes,
                    self.spec.offsets,
                    self.spec.sizes,
                    strict=True,
                )
            )
            if i not in keep
        }
        if self.all_trainable:
            return global_vec, consts
        return torch.cat(
            [global_vec[off : off + size] for _, _, off, _, size in self._layout]
        ), consts

    def expand(self, rows: torch.Tensor) -> torch.Tensor:
        """``(clients, trainable)`` rows as ``(clients, spec.size)``, zero for the constants."""
        if self.all_trainable:
            return rows
        out = rows.new_zeros((rows.shape[0], self.spec.size))
        for _, _, off, toff, size in self._layout:
            out[:, off : off + size] = rows[:, toff : toff + size]
        return out

    def stack(self, trainable: torch.Tensor, clients: int) -> list[torch.Tensor]:
        """One ``(clients, *shape)`` copy of each trainable tensor, every row equal to the global."""
        return [
            trainable[toff : toff + size].view(shape).expand(clients, *shape).clone()
            for _, shape, _, toff, size in self._layout
        ]

    def flatten(self, stacked: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(clients, trainable)`` rows from per-tensor stacks."""
        return torch.cat([p.reshape(p.shape[0], -1) for p in stacked], 1)

    def loss_and_grads(
        self,
        params: Sequence[torch.Tensor],
        consts: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weights: torch.Tensor,
        extra: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-client weighted losses ``(k,)`` and their gradients, one ``(k, *shape)`` per tensor.

        ``params`` holds ``(k, *shape)`` per trainable tensor; ``x``, ``y`` and ``weights`` are
        ``(k, batch, ...)``. A client's loss is ``sum_i weights[k, i] * loss_i``: a mean over its
        real samples when the weights are ``1 / true batch size`` for them and zero for padding.
        ``extra(params by name) -> (k,)`` adds a per-client term (a loss hook) to what is
        differentiated; the returned losses are the data losses alone.
        """
        k, batch = weights.shape
        leaves = {
            name: p.detach().requires_grad_()
            for (name, *_), p in zip(self._layout, params, strict=True)
        }
        module = self.module

        def forward(p: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
            return functional_call(module, (p, dict(consts)), (xb,))  # type: ignore[no-any-return]

        out = vmap(forward)(leaves, x)
        losses = self.loss(
            out.reshape(k * batch, *out.shape[2:]), y.reshape(k * batch, *y.shape[2:])
        )
        per_client = (losses.reshape(k, batch) * weights).sum(1)
        total = per_client if extra is None else per_client + extra(leaves)
        grads = torch.autograd.grad(total.sum(), list(leaves.values()))
        return per_client.detach(), list(grads)

    def dp_sgd_grads(
        self,
        params: Sequence[torch.Tensor],
        consts: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weights: torch.Tensor,
        noise: Mapping[str, torch.Tensor],
        training: LocalTraining,
        extra: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``loss_and_grads`` for DP-SGD: each client's clipped and noised gradient
        (``fedloom.client.local.clip_and_noise``), from per-example gradients taken by a ``vmap``
        over the examples inside the ``vmap`` over the clients. ``noise`` holds each client's
        standard-normal draws, ``(k, *shape)`` per tensor."""
        leaves = {name: p.detach() for (name, *_), p in zip(self._layout, params, strict=True)}
        module, loss_fn = self.module, self.eager_loss

        def client(
            p: Tensors, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor, nb: Tensors
        ) -> tuple[torch.Tensor, Tensors]:
            losses, per_example = per_example_grads(module, p, loss_fn, xb, yb, consts)
            grads = clip_and_noise(
                per_example,
                wb,
                training.dp_sgd_max_grad_norm,
                nb,
                training.dp_sgd_noise_multiplier,
            )
            return (losses * wb).sum(), grads

        per_client, grads = vmap(client)(leaves, x, y, weights, dict(noise))
        out = [grads[name] for name in leaves]
        if extra is not None:  # a loss hook's term is not clipped: it reads no data
            hooked = {name: p.detach().requires_grad_() for name, p in leaves.items()}
            terms = torch.autograd.grad(extra(hooked).sum(), list(hooked.values()))
            out = [g + t for g, t in zip(out, terms, strict=True)]
        return per_client.detach(), out

    def probe(self, global_vec: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> int:
        """Check the vectorised loss and gradients against eager autograd on one real minibatch,
        and return the activation bytes of that minibatch (for the memory budget).

        Raises NotVectorizable when the vmapped computation fails or disagrees. An exception from
        the eager computation propagates unchanged: it is this client's data, not the model.
        """
        with torch.random.fork_rng(devices=[]):
            return self._probe(global_vec, x, y)

    def _probe(self, global_vec: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> int:
        trainable, consts = self.split(global_vec)
        named = {
            name: trainable[toff : toff + size].view(shape).clone().requires_grad_()
            for name, shape, _, toff, size in self._layout
        }
        activations = [x.numel() * x.element_size()]

        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                activations.append(out.numel() * out.element_size())

        leaves = [m for m in self.module.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(record) for m in leaves]
        try:
            self.module.train()
            out = functional_call(self.module, (named, consts), (x,))
        finally:
            for h in hooks:
                h.remove()
        ref_loss = self.eager_loss(out, y)
        ref_grads = torch.autograd.grad(ref_loss, list(named.values()), allow_unused=True)
        unused = [name for name, g in zip(named, ref_grads, strict=True) if g is None]
        if unused:
            # torch.optim skips such parameters entirely (no weight decay, no momentum).
            raise NotVectorizable(f"parameters {unused} get no gradient from the loss")
        ref = torch.cat([g.reshape(-1) for g in ref_grads if g is not None])

        weights = torch.full((2, len(x)), 1.0 / len(x), dtype=out.dtype)
        try:
            loss, per_tensor = self.loss_and_grads(
                self.stack(trainable, 2),
                consts,
                x.expand(2, *x.shape),
                y.expand(2, *y.shape),
                weights,
            )
        except Exception as exc:  # vmap rejects an operation of the model or the loss
            raise NotVectorizable(f"vmap cannot run this model or loss ({one_line(exc)})") from exc
        grads = self.flatten(per_tensor)
        scale = float(ref.abs().max()) + 1e-12
        for k in range(2):
            if not torch.allclose(loss[k], ref_loss.detach(), rtol=1e-4, atol=1e-6):
                raise NotVectorizable(
                    f"the loss is not a mean of per-sample losses under vmap "
                    f"({float(loss[k]):.6g} vs eager {float(ref_loss.detach()):.6g})"
                )
            err = float((grads[k] - ref).abs().max())
            if err > 1e-4 * scale + 1e-6:
                raise NotVectorizable(f"vmapped gradients differ from eager ones by {err:.3g}")
        return int(sum(activations))
