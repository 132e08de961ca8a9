"""The shared part of the aggregators that need every update at once (median, trimmed mean,
Krum, centered clipping): they keep each update until ``finish``, so memory is O(clients x model),
where the streaming mean keeps O(model)."""

from __future__ import annotations

import numpy as np

from fedloom.aggregators.mean import EmptyAggregate


class Buffered:
    """Keeps the updates (float32) and their weights; ``rows()`` stacks them for ``finish``."""

    def __init__(self) -> None:
        self._size: int | None = None
        self._vecs: list[np.ndarray] = []
        self._weights: list[float] = []

    def begin(self, size: int) -> None:
        self._size = size
        self._vecs, self._weights = [], []

    def add(self, vec: np.ndarray, weight: float) -> None:
        if self._size is None:
            raise RuntimeError("call begin() before add()")
        if vec.shape != (self._size,):
            raise ValueError(f"an update of shape {vec.shape}, the aggregate has ({self._size},)")
        # A copy: the caller may reuse its buffer (or hand a view into a bigger upload).
        self._vecs.append(np.array(vec, dtype=np.float32))
        self._weights.append(float(weight))

    @property
    def count(self) -> int:
        return len(self._vecs)

    def rows(self, at_least: int = 1) -> np.ndarray:
        """The updates as a (clients, size) float64 matrix; ``EmptyAggregate`` with fewer than
        ``at_least``."""
        if len(self._vecs) < at_least:
            raise EmptyAggregate(
                f"{len(self._vecs)} updates, {type(self).__name__} needs at least {at_least}"
            )
        return np.stack(self._vecs).astype(np.float64)
