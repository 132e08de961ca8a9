"""Seeded client selection."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedloom.errors import ConfigError


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
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    n = len(eligible)
    if n < min_clients:
        raise ConfigError(
            f"min_fit_clients={min_clients} but only {n} clients have data; lower "
            "strategy.min_fit_clients or use more clients"
        )
    k = min(n, max(min_clients, math.ceil(fraction * n - 1e-9)))
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
