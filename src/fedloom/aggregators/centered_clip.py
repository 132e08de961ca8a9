"""Centered clipping.

Karimireddy, He, Jaggi. "Learning from History for Byzantine Robust Optimization." ICML 2021.

Starting from ``v_0``, each of ``iters`` steps moves the estimate by the mean of the clipped
differences to the updates:

    v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) * min(1, tau / ||x_i - v_l||)

so a far-away update pulls the estimate by at most ``tau / n`` per step. The paper starts from the
previous round's (momentum) aggregate; here every round starts from ``v_0 = 0``, the update that
leaves the model unchanged, so the aggregator keeps no state between rounds. ``num_examples``
weights are ignored, as in the paper.

Buffers every update: memory O(clients x model).
"""

from __future__ import annotations

import numpy as np

from fedloom.aggregators._buffered import Buffered


class CenteredClip(Buffered):
    name = "centered_clip"

    def __init__(self, tau: float = 1.0, iters: int = 3) -> None:
        if not tau > 0:
            raise ValueError(f"centered clipping tau must be > 0, got {tau}")
        if iters < 1:
            raise ValueError(f"centered clipping iters must be >= 1, got {iters}")
        super().__init__()
        self.tau, self.iters = tau, iters

    def finish(self) -> np.ndarray:
        rows = self.rows()
        v = np.zeros(rows.shape[1])
        for _ in range(self.iters):
            diff = rows - v
            norms = np.linalg.norm(diff, axis=1)
            scale = np.minimum(1.0, self.tau / np.maximum(norms, 1e-300))
            v = v + (diff * scale[:, None]).mean(axis=0)
        return v.astype(np.float32)
