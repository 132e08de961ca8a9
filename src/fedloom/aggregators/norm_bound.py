"""Norm bounding: each update is clipped to an L2 norm of at most ``max_norm``, then the
example-weighted mean is taken.

Sun, Kairouz, Suresh, McMahan. "Can You Really Backdoor Federated Learning?" NeurIPS 2019
workshop (arXiv:1911.07963): norm bounding ``x * min(1, M / ||x||)`` defends against boosted
(scaled) model-replacement updates at little cost to honest ones.

It streams like the mean: memory O(model). It bounds how far one update can move the model, not
its direction, so it does not stop a sign flip at honest scale.
"""

from __future__ import annotations

import numpy as np

from fedloom.aggregators.mean import WeightedMean


class NormBound(WeightedMean):
    name = "norm_bound"

    def __init__(self, max_norm: float = 1.0, weighted: bool = True) -> None:
        if not max_norm > 0:
            raise ValueError(f"norm bound must be > 0, got {max_norm}")
        super().__init__(weighted)
        self.max_norm = max_norm

    def add(self, vec: np.ndarray, weight: float) -> None:
        norm = float(np.linalg.norm(vec.astype(np.float64)))
        scale = min(1.0, self.max_norm / norm) if norm > 0 else 1.0
        super().add(vec.astype(np.float64) * scale, weight)
