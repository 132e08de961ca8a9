"""Who shares secrets with whom: the communication graph of SecAgg+ (Bell et al. 2020).

SecAgg (Bonawitz et al. 2017) is the complete graph: every client masks against, and gives shares
to, every other. SecAgg+ replaces it with a sparse random graph of degree ``k = O(log n)``: a
Harary graph ``H(k, n)`` (clients on a ring, each joined to the ``k/2`` nearest on either side)
under a uniformly random relabelling, so the server cannot choose who neighbours whom beyond the
randomness it draws. Masks cancel over any graph; what shrinks is the work and the bytes, from
``O(n)`` to ``O(log n)`` per client.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def default_neighbours(n: int) -> int:
    """``k`` for a cohort of ``n`` when the config leaves it open: ``3 log2 n`` rounded up to an
    even number, at most ``n - 1``. This is the logarithmic degree of Bell et al., with a constant
    chosen for cohorts of tens to thousands; their Theorem 3.6 gives the ``k`` a given bound on
    corrupted and dropped clients needs, and a deployment with such bounds should set
    ``secure_aggregation.neighbours`` from it."""
    if n <= 1:
        return 0
    k = 2 * math.ceil(1.5 * math.log2(n))
    return min(n - 1, k)


def harary_neighbours(
    clients: Sequence[int], k: int, rng: np.random.Generator
) -> dict[int, list[int]]:
    """Each client's neighbours in ``H(k, n)`` over a random ordering of ``clients``; the complete
    graph when ``k >= n - 1``. ``k`` is rounded up to even (a ring joins both sides)."""
    ids = sorted(clients)
    n = len(ids)
    if k >= n - 1:
        return {c: [d for d in ids if d != c] for c in ids}
    half = (k + 1) // 2
    ring = [ids[i] for i in rng.permutation(n)]
    out: dict[int, set[int]] = {c: set() for c in ids}
    for pos, c in enumerate(ring):
        for step in range(1, half + 1):
            d = ring[(pos + step) % n]
            out[c].add(d)
            out[d].add(c)
    return {c: sorted(v) for c, v in out.items()}


def threshold_of(holders: int, fraction: float) -> int:
    """The shares needed out of ``holders`` (a client's neighbours and itself): ``ceil(fraction *
    holders)``, at least 1."""
    return max(1, math.ceil(fraction * holders - 1e-9))
