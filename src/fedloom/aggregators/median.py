"""Coordinate-wise median of client updates.

Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates." ICML 2018 (the ``median`` rule).

Each coordinate of the aggregate is the median of that coordinate over the clients (the mean of
the two middle values for an even count). As long as fewer than half the clients are malicious,
each coordinate lies between honest values, whatever the others send. ``num_examples`` weights are
ignored: an attacker cannot buy influence by claiming a large dataset.

Buffers every update: memory O(clients x model).
"""

from __future__ import annotations

import numpy as np

from fedloom.aggregators._buffered import Buffered


class CoordinateMedian(Buffered):
    name = "median"

    def finish(self) -> np.ndarray:
        out: np.ndarray = np.median(self.rows(), axis=0).astype(np.float32)
        return out
