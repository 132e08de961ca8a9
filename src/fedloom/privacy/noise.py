"""Gaussian noise for the server's clipped sum: from the operating system's CSPRNG by default.

Noise that someone can predict protects nothing, so by default every draw reads fresh bytes from
``secrets`` (the operating system's cryptographically secure generator) and turns them into
normal variates with the Box-Muller transform in float64. ``seed`` gives a reproducible stream
instead (numpy's PCG64 seeded by ``(seed, round)``), for experiments and tests only: anyone who
knows the seed can subtract the noise.

Not covered by either: floating-point sampling of a Gaussian leaks through the low bits of the
result (Mironov, "On Significance of the Least Significant Bits for Differential Privacy", CCS
2012); discrete or snapped mechanisms fix that, this module does not.
"""

from __future__ import annotations

import secrets

import numpy as np

__all__ = ["gaussian_noise"]

_TAG = 0x6E6F697365  # "noise": keeps this stream apart from others seeded by the same (seed, round)


def _secure_uniform(n: int) -> np.ndarray:
    """``n`` uniforms in (0, 1] with 53 random bits each, from the OS CSPRNG."""
    words = np.frombuffer(secrets.token_bytes(8 * n), dtype=np.uint64) >> np.uint64(11)
    uniform: np.ndarray = (words.astype(np.float64) + 1.0) / 2.0**53
    return uniform


def gaussian_noise(size: int, std: float, round_num: int, seed: int | None = None) -> np.ndarray:
    """``size`` draws of ``N(0, std^2)`` (float64): secure when ``seed`` is None, else the
    reproducible stream of ``(seed, round_num)``."""
    if seed is not None:
        rng = np.random.default_rng([seed, round_num, _TAG])
        seeded: np.ndarray = std * rng.standard_normal(size)
        return seeded
    pairs = -(-size // 2)
    u1, u2 = _secure_uniform(pairs), _secure_uniform(pairs)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    normal: np.ndarray = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]
    return std * normal
