"""Shamir secret sharing (Shamir 1979, "How to Share a Secret") of 32-byte secrets.

A secret ``s`` (an integer below ``2**256``) is the constant term of a random polynomial of degree
``t - 1`` over the prime field of ``P = 2**521 - 1`` (a Mersenne prime, larger than every secret);
holder ``x`` (a non-zero field element) gets ``f(x)``. Any ``t`` shares give ``s`` back by Lagrange
interpolation at 0; fewer reveal nothing about it. Coefficients come from ``secrets`` (the OS
CSPRNG). A share travels as 66 big-endian bytes.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

P = 2**521 - 1
SHARE_BYTES = 66
SECRET_BYTES = 32


def split(secret: bytes, holders: Sequence[int], threshold: int) -> dict[int, bytes]:
    """Shares of ``secret`` (32 bytes) for the field points ``holders`` (distinct, positive), any
    ``threshold`` of which reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold {threshold} must be in [1, {len(holders)}] (the holders)")
    if len(set(holders)) != len(holders) or any(not 0 < x < P for x in holders):
        raise ValueError("share holders must be distinct positive points")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(P) for _ in range(threshold - 1)]
    out = {}
    for x in holders:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % P
        out[x] = y.to_bytes(SHARE_BYTES, "big")
    return out


def reconstruct(shares: Mapping[int, bytes]) -> bytes:
    """The secret behind ``shares`` (point -> share). Exactly the shares given are used, so pass
    ``threshold`` of them; ``ValueError`` when the result is not a 32-byte secret (the shares were
    too few or not all of one secret)."""
    if not shares:
        raise ValueError("no shares to reconstruct from")
    points = [(x, int.from_bytes(y, "big")) for x, y in shares.items()]
    if any(len(y) != SHARE_BYTES for y in shares.values()) or any(y >= P for _, y in points):
        raise ValueError(f"a share is {SHARE_BYTES} bytes below the field prime")
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * -xj % P
                den = den * (xi - xj) % P
        secret = (secret + yi * num * pow(den, -1, P)) % P
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ValueError("the shares do not reconstruct a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")
