"""Train a chunk of TorchClients in lockstep: the training loop of the vectorized engine.

Equivalence with ``TorchClient.fit`` (the sequential reference):

- minibatches: epoch ``e`` of client ``k`` visits ``torch.randperm(n_k, generator=g_k)`` with
  ``g_k = torch.Generator().manual_seed(client_seed(seed, round, k))``, in slices of ``batch_size``;
  gradient mode (FedSGD) visits the data in order;
- padding: every minibatch is padded to ``batch_size`` with real samples of the same client whose
  weight is zero, and a client's last, partial batch is a mean over its own true size;
- finished clients: clients are sorted by step count, longest first, so a step runs on the leading
  block of still-active rows and leaves the others' parameters and optimiser state untouched;
- optimisers and hooks: the very functions ``TorchClient`` runs (``fedloom.client.local``): the
  element-wise optimiser steps on the stacked rows, and the algorithm hooks (loss, gradient, final)
  under ``torch.func.vmap`` over the cohort, with shared inputs (the global model, server blobs)
  broadcast and per-client inputs (client state, step counts) batched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import vmap

from fedloom.client.local import (
    LocalHooks,
    LocalOptimizer,
    LocalTraining,
    Tensors,
    flat_part,
    local_steps,
    make_local_optimizer,
    named_views,
    noise_generator,
    state_arrays,
    state_views,
)
from fedloom.client.state import State
from fedloom.client.torch_client import TorchClient
from fedloom.core.params import ParamSpec
from fedloom.core.task import MASK
from fedloom.engines._vmap_model import CohortModel


@dataclass(frozen=True)
class ChunkOutcome:
    """Rows in the chunk's client order: uploads ``(clients, parts * spec.size)`` float32, losses,
    and each client's state after the round."""

    updates: np.ndarray
    losses: list[float]
    states: list[State]


def client_steps(n: int, training: LocalTraining, gradient: bool) -> int:
    return -(-n // training.batch_size) if gradient else local_steps(n, training)


def bytes_per_client(
    model: CohortModel,
    activation_bytes: int,
    training: LocalTraining,
    gradient: bool,
    steps: int,
    sample_bytes: int,
    hooks: LocalHooks | None = None,
) -> int:
    """Estimated peak memory that one more client adds to a chunk.

    Parameter-sized rows: the stacked params, their autograd gradients, a weight-decay or Adam
    temporary, the flattened result and the update handed to the codec, plus the optimiser state
    (and the gradient sum in gradient mode). Activations, measured by the probe, count three times:
    saved for backward, their gradients, and the per-sample loss. Data: every step's padded
    minibatch, pre-gathered once per chunk, with its int64 index and float weight.
    """
    rows = 5 + LocalOptimizer.state_rows(training) + (1 if gradient else 0)
    if training.dp_sgd:
        rows += training.batch_size + 1  # per-example gradients, and the noise
    if hooks is not None:
        # client state in and out, and the extra upload parts
        rows += 2 * len(hooks.state) + 2 * (hooks.upload_parts - 1)
    param_bytes = rows * model.num_trainable * 4 + model.spec.size * 4
    data_bytes = steps * training.batch_size * (sample_bytes + 12)
    return param_bytes + 3 * activation_bytes + data_bytes


@dataclass(frozen=True)
class MinibatchPlan:
    """Where every sample of every client goes: step ``t``, cohort row ``k``, batch slot ``i``.

    ``index[t, k, i]`` is a row of the chunk's concatenated data (padding points at a real sample of
    the same client), ``weights[t, k, i]`` its weight in client ``k``'s loss at step ``t``
    (``1 / true batch size``, or ``1 / n_k`` in gradient mode, and 0 for padding), ``counts[t, k]``
    the samples that step's loss stands for in the ``train_loss`` metric, and ``active[t]`` how many
    leading rows still train at step ``t``.
    """

    index: np.ndarray
    weights: np.ndarray
    counts: np.ndarray
    active: list[int]


def plan_minibatches(
    sizes: np.ndarray, local: np.ndarray, passes: int, batch: int, gradient: bool
) -> MinibatchPlan:
    """Lay out minibatches for clients of ``sizes`` (sorted by step count, longest first).

    ``local`` holds, client after client, the sample order of each of its ``passes`` epochs (each a
    permutation of ``range(n_k)``), exactly as ``TorchClient`` would visit them. Built with whole-array
    numpy operations: no Python loop over clients or steps.
    """
    num = len(sizes)
    batches = -(-sizes // batch)
    steps = passes * batches
    total = int(steps.max(initial=0))
    # Padding reads the first sample of its client: finite, and weighted zero.
    base = np.minimum(np.cumsum(sizes) - sizes, max(int(sizes.sum()) - 1, 0))
    index = np.broadcast_to(base[None, :, None], (total, num, batch)).copy()
    weights = np.zeros((total, num, batch), np.float32)
    t_grid = np.arange(total)[:, None]
    live = t_grid < steps[None, :]
    true_size = np.minimum(batch, sizes - (t_grid % np.maximum(batches, 1)) * batch)
    counts = np.where(live, 1.0 if gradient else true_size, 0.0)
    per_client = passes * sizes
    client = np.repeat(np.arange(num), per_client)
    if len(client):
        offset = np.repeat(np.cumsum(per_client) - per_client, per_client)
        epoch, position = np.divmod(np.arange(len(client)) - offset, sizes[client])
        t = epoch * batches[client] + position // batch
        slot = position % batch
        index[t, client, slot] = local + base[client]
        scale = 1.0 / sizes[client] if gradient else 1.0 / true_size[t, client]
        weights[t, client, slot] = scale
    active = live.sum(1).tolist()
    return MinibatchPlan(index, weights, counts, active)


def train_chunk(
    model: CohortModel,
    global_vec: torch.Tensor,
    clients: Sequence[TorchClient],
    seeds: Sequence[int],
    training: LocalTraining,
    gradient: bool,
    hooks: LocalHooks | None = None,
    blobs: Mapping[str, torch.Tensor] | None = None,
    states: Sequence[State] | None = None,
    starts: Sequence[np.ndarray | None] | None = None,
) -> ChunkOutcome:
    """Run ``TorchClient.fit`` for every client of the chunk at once.

    Returns, per client in the given order, what ``hooks.final`` uploads (the delta
    ``local - global`` for plain training) or the full local gradient (gradient mode), the
    ``train_loss`` metric, and the client's new state. ``blobs`` are the task's extra payloads by
    role (flat vectors), ``states`` each client's state before the round. ``starts``: where each
    client's training starts (a flat model vector, or None: the global model); the updates are
    still ``local - global``.
    """
    hooks = hooks or LocalHooks()
    steps = [client_steps(c.num_examples, training, gradient) for c in clients]
    order = sorted(range(len(clients)), key=lambda i: -steps[i])  # stable: longest first
    ordered = [clients[i] for i in order]
    sizes = np.array([c.num_examples for c in ordered], np.int64)
    num, passes = len(clients), 1 if gradient else training.epochs
    if gradient:
        local = np.concatenate([np.arange(n) for n in sizes]) if num else np.zeros(0, np.int64)
    else:
        perms = []
        for i in order:
            generator = torch.Generator().manual_seed(seeds[i])
            n = clients[i].num_examples
            perms += [torch.randperm(n, generator=generator) for _ in range(passes)]
        local = torch.cat(perms).numpy() if perms else np.zeros(0, np.int64)
    plan = plan_minibatches(sizes, local, passes, training.batch_size, gradient)
    total_steps = len(plan.active)

    spec, names = model.spec, model.names
    shared = {"global": named_views(spec, names, global_vec)}
    for role in hooks.blobs:
        if blobs is None or role not in blobs:
            raise ValueError(f"local training {hooks.name!r} needs the task's {role!r} blob")
        shared[role] = named_views(spec, names, blobs[role])
    own = _stack_states(hooks, spec, names, [states[i] if states else {} for i in order])
    # A pruned model: one mask for the cohort, broadcast over its rows.
    masks = named_views(spec, names, blobs[MASK]) if blobs and MASK in blobs else None

    trainable, consts = model.split(global_vec)
    params = model.stack(trainable, num)
    if starts is not None:  # personalised starting points (FedPer, Ditto's personal pass)
        for row, i in enumerate(order):
            start = starts[i]
            if start is not None:
                _write_row(params, row, model.split(torch.from_numpy(start))[0])
    accumulated = [torch.zeros_like(p) for p in params] if gradient else params
    losses = torch.zeros((total_steps, num), dtype=trainable.dtype)
    if total_steps:
        index = torch.from_numpy(plan.index)
        x = torch.from_numpy(np.concatenate([c.x_train for c in ordered]))[index]
        y = torch.from_numpy(np.concatenate([c.y_train for c in ordered]))[index]
        w = torch.from_numpy(plan.weights)
        model.module.train()
        optimizer = None if gradient else make_local_optimizer(training, params)
        hook_loss = vmap(hooks.loss, in_dims=(0, None, 0)) if hooks.has_loss else None
        hook_grad = vmap(hooks.grad, in_dims=(0, 0, None, 0)) if hooks.has_grad else None
        # DP-SGD: each client's noise stream, drawn in the order TorchClient draws it
        noise = [noise_generator(seeds[i]) for i in order] if training.dp_sgd else None
        for t, k in enumerate(plan.active):
            rows = [p[:k] for p in params]
            own_k = {g: {n: v[:k] for n, v in ts.items()} for g, ts in own.items()}
            extra = None if hook_loss is None else _bind(hook_loss, shared, own_k)
            if noise is not None:
                draws = [[torch.randn(p.shape[1:], generator=g) for p in rows] for g in noise[:k]]
                stacked = {n: torch.stack([d[j] for d in draws]) for j, n in enumerate(names)}
                loss, grads = model.dp_sgd_grads(
                    rows, consts, x[t, :k], y[t, :k], w[t, :k], stacked, training, extra
                )
            else:
                loss, grads = model.loss_and_grads(
                    rows, consts, x[t, :k], y[t, :k], w[t, :k], extra
                )
            losses[t, :k] = loss
            with torch.no_grad():
                if optimizer is None:
                    torch._foreach_add_([a[:k] for a in accumulated], grads)
                    continue
                if hook_grad is not None:
                    hooked = hook_grad(
                        dict(zip(names, grads, strict=True)),
                        dict(zip(names, rows, strict=True)),
                        shared,
                        own_k,
                    )
                    grads = [hooked[n] for n in names]
                if masks is not None:
                    grads = [g * masks[n] for g, n in zip(grads, names, strict=True)]
                optimizer.step(rows, grads, t)
    flat = model.flatten(accumulated)
    if not gradient:
        flat -= trainable
    full = model.expand(flat).to(torch.float32)
    new_states: list[State] = [{} for _ in range(num)]
    if type(hooks) is LocalHooks or gradient:
        uploads = full
    else:
        delta = named_views(spec, names, full)
        step_counts = torch.tensor([float(steps[i]) for i in order])
        with torch.no_grad():
            parts, state_out = vmap(hooks.final, in_dims=(0, None, 0, 0))(
                delta, shared, own, step_counts
            )
        zeros = torch.zeros_like(full)
        uploads = torch.cat(
            [flat_part(spec, part, full if i == 0 else zeros) for i, part in enumerate(parts)], 1
        )
        for row in range(num):
            new_states[row] = state_arrays(
                {g: {n: v[row] for n, v in ts.items()} for g, ts in state_out.items()}
            )
    totals = (losses.double() * torch.from_numpy(plan.counts)).sum(0).numpy()
    seen = np.maximum(1, np.ones_like(sizes) if gradient else training.epochs * sizes)
    updates = uploads.numpy()
    unsorted = np.empty_like(updates)
    unsorted[order] = updates
    loss_out = np.empty(num)
    loss_out[order] = totals / seen
    states_out: list[State] = [{} for _ in range(num)]
    for row, i in enumerate(order):
        states_out[i] = {**(states[i] if states else {}), **new_states[row]}
    return ChunkOutcome(unsorted, loss_out.tolist(), states_out)


def _write_row(params: Sequence[torch.Tensor], row: int, flat: torch.Tensor) -> None:
    """Write ``flat`` (one client's trainable vector) into row ``row`` of the stacked tensors."""
    offset = 0
    with torch.no_grad():
        for p in params:
            size = p[row].numel()
            p[row].copy_(flat[offset : offset + size].view(p[row].shape))
            offset += size


def _bind(
    fn: Callable[..., torch.Tensor], shared: Mapping[str, Tensors], own: Mapping[str, Tensors]
) -> Callable[[Tensors], torch.Tensor]:
    """``fn(params, shared, own)`` as a function of the params alone."""
    return lambda params: fn(params, shared, own)


def _stack_states(
    hooks: LocalHooks, spec: ParamSpec, names: Sequence[str], states: Sequence[State]
) -> dict[str, Tensors]:
    """Each state group of ``hooks`` as ``(clients, *shape)`` tensors, rows in ``states`` order."""
    per_client = [state_views(hooks.state, spec, names, s) for s in states]
    return {
        group: {n: torch.stack([c[group][n] for c in per_client]) for n in names}
        for group in hooks.state
    }
