"""Seeded client selection."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedloom.errors import ConfigError


def _cohort_size(n: int, fraction: float, min_clients: int) -> int:
    """``max(min_clients, ceil(fraction * n))``, at most ``n``; ``ConfigError`` when ``n``
    clients cannot give ``min_clients``."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    if n < min_clients:
        raise ConfigError(
            f"min_fit_clients={min_clients} but only {n} clients have data; lower "
            "strategy.min_fit_clients or use more clients"
        )
    return min(n, max(min_clients, math.ceil(fraction * n - 1e-9)))


def sample_clients(
    eligible: Sequence[int],
    fraction: float,
    min_clients: int,
    rng: np.random.Generator,
) -> list[int]:
    """Sample ``max(min_clients, ceil(fraction * len(eligible)))`` clients without replacement.

    Returns them in ascending id order, so results do not depend on the order of sampling.
    Raises ``ConfigError`` when fewer than ``min_clients`` clients are eligible.
    """
    n = len(eligible)
    k = _cohort_size(n, fraction, min_clients)
    if k == n:
        return sorted(eligible)
    chosen = rng.choice(np.asarray(eligible), size=k, replace=False)
    return sorted(int(c) for c in chosen)


def poisson_sample(eligible: Sequence[int], rate: float, rng: np.random.Generator) -> list[int]:
    """Each eligible client independently with probability ``rate`` (Poisson sampling), in
    ascending id order. The cohort's size is random and may be zero: this is the sampling the
    privacy amplification of DP-FedAvg's add/remove analysis assumes.
    """
    if not 0 < rate <= 1:
        raise ConfigError(f"strategy.fraction_fit must be in (0, 1], got {rate}")
    ids = np.asarray(sorted(eligible), dtype=np.int64)
    return [int(c) for c in ids[rng.random(len(ids)) < rate]]


def size_proportional_sample(
    eligible: Sequence[int],
    num_examples: Mapping[int, int],
    fraction: float,
    min_clients: int,
    rng: np.random.Generator,
) -> list[int]:
    """As many clients as ``sample_clients`` takes, drawn without replacement in proportion to
    their training-set sizes ``num_examples``, in ascending id order.

    Each draw picks one of the clients not yet drawn with probability proportional to its size
    (successive sampling, numpy's weighted ``choice`` without replacement: the sampling of the
    q-FFL and FedProx papers' code, Li et al. 2020). A round's clients then stand for the
    population with weights ``p_k = n_k / n``, so their updates are averaged unweighted.
    Raises ``ConfigError`` when fewer than ``min_clients`` clients are eligible, and
    ``ValueError`` when an eligible client has no positive size.
    """
    ids = sorted(eligible)
    n = len(ids)
    k = _cohort_size(n, fraction, min_clients)
    sizes = np.array([num_examples.get(c, 0) for c in ids], dtype=np.float64)
    if (sizes <= 0).any():
        missing = [c for c, size in zip(ids, sizes, strict=True) if size <= 0]
        raise ValueError(f"size-proportional sampling: clients {missing} have no training-set size")
    if k == n:
        return ids
    chosen = rng.choice(np.asarray(ids), size=k, replace=False, p=sizes / sizes.sum())
    return sorted(int(c) for c in chosen)


def select_clients(
    sampling: str,
    eligible: Sequence[int],
    fraction: float,
    min_clients: int,
    rng: np.random.Generator,
    num_examples: Mapping[int, int],
) -> list[int]:
    """A round's cohort by ``strategy.sampling``: ``fixed`` (``sample_clients``), ``poisson``
    (``poisson_sample``) or ``size`` (``size_proportional_sample``)."""
    if sampling == "poisson":
        return poisson_sample(eligible, fraction, rng)
    if sampling == "size":
        return size_proportional_sample(eligible, num_examples, fraction, min_clients, rng)
    if sampling == "fixed":
        return sample_clients(eligible, fraction, min_clients, rng)
    raise ConfigError(f"strategy.sampling={sampling!r}: allowed 'fixed', 'poisson' or 'size'")
