"""How evenly a model serves its clients: spread of a per-client metric and its worst decile."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["fairness_summary"]


def fairness_summary(values: Sequence[float], *, higher_is_better: bool = True) -> dict[str, float]:
    """Summarise one metric measured on each client.

    Parameters
    ----------
    values:
        One value per client, for instance each client's test accuracy.
    higher_is_better:
        Whether larger values are better (accuracy) or worse (loss); decides which clients are the
        worst.

    Returns
    -------
    ``mean``, ``std`` (population, ``ddof=0``), ``min``, ``max``, and ``worst10``: the mean of the
    worst ``ceil(0.1 * n)`` clients, so at least one client for any ``n >= 1``.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("fairness_summary needs at least one client value, got an empty sequence")
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            "fairness_summary got NaN or infinite client values; "
            "leave out clients without a metric first"
        )
    num_worst = -(-arr.size // 10)  # ceil(n / 10) in exact integer arithmetic
    ordered = np.sort(arr)
    worst = ordered[:num_worst] if higher_is_better else ordered[-num_worst:]
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
        "worst10": float(worst.mean()),
    }
