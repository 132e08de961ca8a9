"""Krum and Multi-Krum.

Blanchard, El Mhamdi, Guerraoui, Stainer. "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent." NeurIPS 2017.

With ``n`` updates of which at most ``f`` are malicious, each update ``i`` gets the score
``s(i) = sum of ||x_i - x_j||^2 over its n - f - 2 nearest other updates``. Krum returns the update
with the lowest score; Multi-Krum returns the plain mean of the ``m`` updates with the lowest scores
(``m = n - f`` by default; ``m = 1`` is Krum). The guarantee needs ``n > 2f + 2``; with fewer
updates the neighbourhood is cut to at least one neighbour, and the guarantee does not hold. Ties in
the score go to the earlier update. ``num_examples`` weights are ignored.

Buffers every update and computes the n x n distances: memory O(clients x model + clients^2).
"""

from __future__ import annotations

import numpy as np

from fedloom.aggregators._buffered import Buffered


def krum_scores(rows: np.ndarray, f: int) -> np.ndarray:
    """The Krum score of each row of ``rows`` (n x size) for at most ``f`` malicious rows."""
    n = rows.shape[0]
    sq = (rows * rows).sum(axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * rows @ rows.T, 0.0)
    neighbours = min(max(n - f - 2, 1), n - 1)
    # each row's own distance (0) sorts first: skip it
    nearest = np.sort(dist, axis=1)[:, 1 : 1 + neighbours]
    scores: np.ndarray = nearest.sum(axis=1)
    return scores


class MultiKrum(Buffered):
    name = "multikrum"

    def __init__(self, f: int = 1, m: int | None = None) -> None:
        if f < 0:
            raise ValueError(f"krum f (malicious clients tolerated) must be >= 0, got {f}")
        if m is not None and m < 1:
            raise ValueError(f"multikrum m (updates averaged) must be >= 1, got {m}")
        super().__init__()
        self.f, self.m = f, m

    def selected(self) -> list[int]:
        """The indices (in arrival order) of the updates the aggregate averages."""
        rows = self.rows()
        n = rows.shape[0]
        if n == 1:
            return [0]
        m = self.m if self.m is not None else max(n - self.f, 1)
        order = np.argsort(krum_scores(rows, self.f), kind="stable")
        return sorted(int(i) for i in order[: min(m, n)])

    def finish(self) -> np.ndarray:
        chosen = self.selected()
        out: np.ndarray = self.rows()[chosen].mean(axis=0).astype(np.float32)
        return out


class Krum(MultiKrum):
    name = "krum"

    def __init__(self, f: int = 1) -> None:
        super().__init__(f, m=1)
