"""Metrics pooled over clients: example-weighted means, RMSE as the root of the pooled MSE."""

from __future__ import annotations

import math

from fedloom.metrics import pooled_metrics


def test_means_are_weighted_by_examples_and_rmse_pools_its_squares() -> None:
    out = pooled_metrics(
        [
            (2, {"rmse": 1.0, "accuracy": 0.5}),
            (6, {"rmse": 3.0, "accuracy": 1.0, "auc": 0.9}),
            (0, {"rmse": 100.0, "accuracy": 0.0}),  # no example: does not count
        ]
    )

    # squared errors 2 * 1 + 6 * 9 = 56 over 8 examples
    assert out["rmse"] == math.sqrt(7.0)
    assert out["accuracy"] == (2 * 0.5 + 6 * 1.0) / 8 == 0.875
    assert out["auc"] == 0.9  # only the client that reports it
    assert pooled_metrics([(0, {"loss": 1.0})]) == {}
