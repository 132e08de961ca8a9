"""Adaptive clipping: the clip norm follows a quantile of the update norms, privately.

Andrew, Thakkar, McMahan, Ramaswamy. "Differentially Private Learning with Adaptive Clipping."
NeurIPS 2021, Algorithm 1 with the geometric update.

Each round, every participating client contributes the bit ``b_i = 1[||delta_i|| <= C]``: whether
its update was **unclipped**. The server releases the noised fraction

    b = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2        (m: expected clients per round)

(the bits are centred, so adding or removing one client moves the sum by 1/2) and moves ``C``
towards the ``gamma`` quantile of the norms:

    C <- C * exp(-eta * (b - gamma))

Too many unclipped updates (``b > gamma``) shrink ``C``, too few grow it; the fixed point is the
quantile. (Counting *clipped* updates with this same rule moves ``C`` the wrong way and diverges.)

Both the count and the clipped sum are Gaussian mechanisms on the same clients, so their privacy
composes: with the run's noise multiplier ``z``, the sum gets the multiplier
``z_sum = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` and the pair costs exactly what one Gaussian mechanism of
multiplier ``z`` costs (Section 3 of the paper). The paper recommends ``sigma_b = m / 20``.
"""

from __future__ import annotations

import math

from fedloom.errors import ConfigError

__all__ = ["default_count_stddev", "noised_unclipped_fraction", "split_noise", "update_clip_norm"]


def default_count_stddev(expected_clients: float) -> float:
    """The paper's ``sigma_b = m / 20``."""
    return expected_clients / 20.0


def split_noise(noise_multiplier: float, count_stddev: float) -> float:
    """The sum's noise multiplier when the count takes ``count_stddev`` of the budget of
    ``noise_multiplier`` (0 when there is no noise at all)."""
    if noise_multiplier == 0:
        return 0.0
    if not 2 * count_stddev > noise_multiplier:
        raise ConfigError(
            f"privacy.noise_multiplier={noise_multiplier:g} is too small to share with the "
            f"adaptive clipping count (its noise std {count_stddev:g} needs 2 * std > the noise "
            f"multiplier); sample more clients per round, raise the noise multiplier, or use "
            "privacy.clipping=fixed"
        )
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


def noised_unclipped_fraction(
    unclipped: int, returned: int, expected: float, noise: float
) -> float:
    """``b`` from ``unclipped`` of ``returned`` updates, ``expected`` clients per round and one
    draw ``noise`` of ``N(0, sigma_b^2)``."""
    return (unclipped - returned / 2 + noise) / expected + 0.5


def update_clip_norm(
    clip_norm: float, unclipped_fraction: float, target_quantile: float, clip_lr: float
) -> float:
    """The geometric update ``C * exp(-eta * (b - gamma))``."""
    return clip_norm * math.exp(-clip_lr * (unclipped_fraction - target_quantile))
