"""Fairness summary of per-client values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedloom.metrics import fairness_summary

# 1..20 in a scrambled order; ceil(10% of 20) = 2 worst clients.
TWENTY = [float(v) for v in np.random.default_rng(0).permutation(np.arange(1, 21))]


def test_twenty_clients_higher_is_better() -> None:
    s = fairness_summary(TWENTY)
    assert s["worst10"] == 1.5  # mean of 1 and 2
    assert s["mean"] == 10.5
    assert s["min"] == 1.0
    assert s["max"] == 20.0
    # population std of 1..n is sqrt((n^2 - 1) / 12)
    assert s["std"] == pytest.approx(math.sqrt(399 / 12))


def test_twenty_clients_lower_is_better() -> None:
    assert fairness_summary(TWENTY, higher_is_better=False)["worst10"] == 19.5  # 19 and 20


@pytest.mark.parametrize(
    ("values", "worst10"),
    [
        ([0.7], 0.7),  # ceil(0.1) = 1
        ([float(v) for v in range(10)], 0.0),  # ceil(1.0) = 1
        ([float(v) for v in range(11)], 0.5),  # ceil(1.1) = 2: mean of 0 and 1
    ],
)
def test_worst_count_rounds_up(values: list[float], worst10: float) -> None:
    assert fairness_summary(values)["worst10"] == worst10


def test_empty_raises() -> None:
    with pytest.raises(ValueError, match="at least one client"):
        fairness_summary([])


def test_nan_raises() -> None:
    with pytest.raises(ValueError, match="NaN"):
        fairness_summary([0.5, float("nan")])
