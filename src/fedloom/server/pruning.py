"""Gradual magnitude pruning of the global model.

Zhu and Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for model
compression" (arXiv:1710.01878): from step ``t0``, every ``dt`` steps over ``n`` pruning steps, the
sparsity rises from ``s_i`` to the target ``s_f`` as

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3

fast at first, while the network has many redundant weights, then ever more slowly. Here a step is a
federated round, ``s_i = 0``, ``t0 = start_round`` and ``t0 + n * dt = end_round`` (the target is
reached at ``end_round`` even when ``every`` does not divide ``end_round - start_round``).

The pruning is global and unstructured: at each pruning round the server keeps the largest
magnitudes among all prunable weights of the global model, whatever their layer, and zeroes the
rest. Prunable weights are the entries of parameters with two or more dimensions (linear and
convolution kernels); biases and other one-dimensional parameters are never pruned (they are few,
and pruning them costs accuracy for almost no bytes). A pruned weight stays pruned: the mask only
ever loses entries.

The mask is server state (checkpointed with the model). Clients receive it once per mask (a
``bitmask`` blob, cached by content hash) and afterwards the model and their updates carry only the
values under the mask; their local training keeps the pruned weights at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedloom.config import PruningConfig
from fedloom.core.params import ParamSpec

MASK_STATE = "pruning/mask"
"""The strategy-state key of the current mask (float32 0/1 over the model)."""


@dataclass(frozen=True)
class PruningSchedule:
    """When to prune and to what sparsity: ``s(r)`` rises from 0 at ``start_round`` to
    ``target_sparsity`` at ``end_round`` on the cubic schedule, with a pruning step every
    ``every`` rounds (and one at ``end_round``)."""

    target_sparsity: float
    start_round: int
    end_round: int
    every: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.target_sparsity < 1.0:
            raise ValueError(
                f"pruning.target_sparsity must be in (0, 1), got {self.target_sparsity}"
            )
        if self.start_round < 1:
            raise ValueError(f"pruning.start_round must be >= 1, got {self.start_round}")
        if self.end_round < self.start_round:
            raise ValueError(
                f"pruning.end_round ({self.end_round}) must be >= pruning.start_round "
                f"({self.start_round})"
            )
        if self.every < 1:
            raise ValueError(f"pruning.every must be >= 1, got {self.every}")

    def prunes_at(self, r: int) -> bool:
        """Whether round ``r`` starts with a pruning step."""
        if r < self.start_round or r > self.end_round:
            return False
        return (r - self.start_round) % self.every == 0 or r == self.end_round

    def sparsity(self, r: int) -> float:
        """The scheduled sparsity of a pruning step at round ``r`` (0 before ``start_round``)."""
        if r < self.start_round:
            return 0.0
        span = self.end_round - self.start_round
        progress = 1.0 if span == 0 else min(1.0, (r - self.start_round) / span)
        return self.target_sparsity * (1.0 - (1.0 - progress) ** 3)


def pruning_schedule(cfg: PruningConfig) -> PruningSchedule | None:
    """The schedule of a run's ``pruning`` section (None when pruning is off)."""
    if not cfg.enabled:
        return None
    return PruningSchedule(cfg.target_sparsity, cfg.start_round, cfg.end_round, cfg.every)


def prunable(spec: ParamSpec) -> np.ndarray:
    """The entries of the flat model that may be pruned: those of parameters with 2+ dimensions."""
    out = np.zeros(spec.size, bool)
    for offset, size, shape in zip(spec.offsets, spec.sizes, spec.shapes, strict=True):
        if len(shape) >= 2:
            out[offset : offset + size] = True
    return out


def magnitude_mask(
    params: np.ndarray, candidates: np.ndarray, sparsity: float, previous: np.ndarray | None = None
) -> np.ndarray:
    """The boolean mask that keeps all non-candidates and the largest ``1 - sparsity`` of the
    candidates by magnitude (``round(sparsity * candidates)`` of them pruned). Weights already
    pruned in ``previous`` are pruned first; ties go to the lower index, so the mask is a pure
    function of its inputs."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    keep = np.ones(params.shape[0], bool)
    index = np.flatnonzero(candidates)
    score = np.abs(params[index]).astype(np.float64)
    if previous is not None:
        score[~previous[index]] = -1.0  # already pruned: below every magnitude
    count = round(sparsity * len(index))
    if previous is not None:
        count = max(count, int((~previous[index]).sum()))  # the mask never regrows
    order = np.argsort(score, kind="stable")
    keep[index[order[:count]]] = False
    return keep


def mask_for_round(
    schedule: PruningSchedule,
    r: int,
    params: np.ndarray,
    spec: ParamSpec,
    state: dict[str, np.ndarray],
) -> np.ndarray | None:
    """The mask of round ``r`` as a boolean support (None before the first pruning step).

    At a pruning round the mask is recomputed from ``params`` (the global model the round starts
    from) and written to ``state``; otherwise the mask in ``state`` holds.
    """
    held = state.get(MASK_STATE)
    previous = None if held is None else held > 0.5
    if schedule.prunes_at(r) and (previous is not None or schedule.sparsity(r) > 0):
        support = magnitude_mask(params, prunable(spec), schedule.sparsity(r), previous)
        state[MASK_STATE] = support.astype(np.float32)
        return support
    return previous


def sparsity_of(support: np.ndarray, spec: ParamSpec) -> float:
    """The fraction of the prunable weights that ``support`` prunes."""
    candidates = prunable(spec)
    total = int(candidates.sum())
    return float((~support[candidates]).sum() / total) if total else 0.0
