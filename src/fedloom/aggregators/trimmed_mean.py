"""Coordinate-wise trimmed mean of client updates.

Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates." ICML 2018 (the ``trimmed mean`` rule).

For each coordinate, the ``k = floor(beta * n)`` largest and ``k`` smallest of the ``n`` client
values are dropped and the rest averaged. It tolerates up to ``k`` malicious clients (of any
values) and keeps more of the honest information than the median. ``beta`` is in [0, 0.5);
``num_examples`` weights are ignored, as in the paper.

Buffers every update: memory O(clients x model).
"""

from __future__ import annotations

import math

import numpy as np

from fedloom.aggregators._buffered import Buffered
from fedloom.aggregators.mean import EmptyAggregate


class TrimmedMean(Buffered):
    name = "trimmed_mean"

    def __init__(self, beta: float = 0.1) -> None:
        if not 0 <= beta < 0.5:
            raise ValueError(f"trimmed mean beta must be in [0, 0.5), got {beta}")
        super().__init__()
        self.beta = beta

    def finish(self) -> np.ndarray:
        rows = self.rows()
        n = rows.shape[0]
        k = math.floor(self.beta * n)
        if n - 2 * k < 1:
            raise EmptyAggregate(f"trimming {k} of each end of {n} updates leaves none")
        ordered = np.sort(rows, axis=0)
        out: np.ndarray = ordered[k : n - k].mean(axis=0).astype(np.float32)
        return out
