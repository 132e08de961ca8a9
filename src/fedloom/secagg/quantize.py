"""Fixed-point encoding of updates into the ring ``Z_{2**modulus_bits}`` and back.

A value is clipped to ``[-c, c]`` and mapped to the nearest of ``2**bits`` evenly spaced levels,
``q = round((x + c) / (2c) * (2**bits - 1))``, so ``q`` lies in ``[0, 2**bits - 1]``. A sum of
``n`` such integers decodes as ``sum_q * 2c / (2**bits - 1) - n c``; each client contributes at most
half a level, ``c / (2**bits - 1)``, of error per coordinate. The sum is exact in the ring as long
as ``n (2**bits - 1) < 2**modulus_bits`` (``max_summands``).

A client's weight ``w`` in ``[0, 1]`` travels the same way on its own scale (levels of ``1 /
(2**bits - 1)``), so the server divides the decoded sum of weighted updates by the decoded sum of
weights and never sees either alone.
"""

from __future__ import annotations

import numpy as np


def levels(bits: int) -> int:
    """The largest quantised value, ``2**bits - 1``."""
    return (1 << bits) - 1


def max_summands(bits: int, modulus_bits: int) -> int:
    """How many quantised values can be summed without wrapping around the modulus."""
    return ((1 << modulus_bits) - 1) // levels(bits)


def quantize(vec: np.ndarray, clip: float, bits: int) -> np.ndarray:
    """``vec`` clipped to ``[-clip, clip]`` and rounded to ``2**bits`` levels, as uint64."""
    x = np.clip(np.asarray(vec, np.float64), -clip, clip)
    return np.rint((x + clip) * (levels(bits) / (2 * clip))).astype(np.uint64)


def quantize_weight(weight: float, bits: int) -> int:
    """A weight in ``[0, 1]`` (clipped to it) on ``2**bits`` levels."""
    return round(min(max(weight, 0.0), 1.0) * levels(bits))


def dequantize_sum(total: np.ndarray, count: int, clip: float, bits: int) -> np.ndarray:
    """The float64 sum of ``count`` values behind the sum ``total`` of their quantisations."""
    return np.asarray(total, np.float64) * (2 * clip / levels(bits)) - count * clip


def dequantize_weight_sum(total: int, bits: int) -> float:
    """The sum of weights behind the sum of their quantisations."""
    return float(total) / levels(bits)
