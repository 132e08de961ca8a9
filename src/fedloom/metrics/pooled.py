"""Metrics pooled over clients: what one evaluation on the union of their test sets would report.

A client that evaluates ``n`` examples reports means over them (loss, accuracy, MAE). Their
``n``-weighted mean is the mean over every client's examples together. A root-mean-square metric
pools as the root of the weighted mean of its squares, so the pooled RMSE is
``sqrt(sum_k n_k rmse_k^2 / sum_k n_k) = sqrt(sum of squared errors / sum_k n_k)``: the RMSE over
every held-out example, not a mean of per-client RMSEs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["ROOT_MEAN_SQUARE", "pooled_metrics"]

ROOT_MEAN_SQUARE = ("rmse",)
"""Metric names (or last words, ``fed_rmse``) that pool as the root of a mean of squares."""


def pooled_metrics(evaluations: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Each metric pooled over ``(num_examples, metrics)`` pairs, one per client; clients that
    evaluated no example and clients that lack a metric do not count for it. A metric no client
    with examples reports is left out."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for n, metrics in evaluations:
        if n <= 0:
            continue
        for key, value in metrics.items():
            v = float(value)
            sums[key] = sums.get(key, 0.0) + n * (v * v if _is_root(key) else v)
            weights[key] = weights.get(key, 0) + n
    out = {}
    for key, total in sums.items():
        mean = total / weights[key]
        out[key] = math.sqrt(mean) if _is_root(key) else mean
    return out


def _is_root(key: str) -> bool:
    return key.rsplit("_", 1)[-1] in ROOT_MEAN_SQUARE
