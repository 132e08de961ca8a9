"""Streaming (weighted) mean and sum of client updates.

A running float64 sum is kept instead of every client's vector, so memory is O(model size) however
many clients report, and each update can be dropped as soon as it has been added.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class EmptyAggregate(ValueError):
    """``finish`` was called with nothing to aggregate (no updates, or every weight zero)."""


class Aggregator(Protocol):
    """``begin(size)``, then ``add(vec, weight)`` per client, then ``finish()``."""

    def begin(self, size: int) -> None: ...

    def add(self, vec: np.ndarray, weight: float) -> None: ...

    def finish(self) -> np.ndarray: ...

    @property
    def count(self) -> int: ...


class WeightedMean:
    """sum_k w_k x_k / sum_k w_k. With ``weighted=False`` every client has weight 1."""

    def __init__(self, weighted: bool = True) -> None:
        self.weighted = weighted
        self._sum: np.ndarray | None = None
        self._total = 0.0
        self._count = 0

    def begin(self, size: int) -> None:
        self._sum = np.zeros(size, dtype=np.float64)
        self._total, self._count = 0.0, 0

    def add(self, vec: np.ndarray, weight: float) -> None:
        if self._sum is None:
            raise RuntimeError("call begin() before add()")
        w = float(weight) if self.weighted else 1.0
        if w < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {w}")
        self._sum += vec.astype(np.float64) * w
        self._total += w
        self._count += 1

    def finish(self) -> np.ndarray:
        if self._sum is None or self._total <= 0:
            raise EmptyAggregate(
                f"{self._count} updates, total weight {self._total:g} (num_examples all 0?)"
            )
        return (self._sum / self._total).astype(np.float32)

    @property
    def count(self) -> int:
        return self._count


class Sum:
    """The plain sum sum_k x_k of the FedSGD seed formula (weights ignored)."""

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self._count = 0

    def begin(self, size: int) -> None:
        self._sum = np.zeros(size, dtype=np.float64)
        self._count = 0

    def add(self, vec: np.ndarray, weight: float) -> None:
        if self._sum is None:
            raise RuntimeError("call begin() before add()")
        self._sum += vec
        self._count += 1

    def finish(self) -> np.ndarray:
        if self._sum is None or self._count == 0:
            raise EmptyAggregate("no updates to aggregate")
        return self._sum.astype(np.float32)

    @property
    def count(self) -> int:
        return self._count
