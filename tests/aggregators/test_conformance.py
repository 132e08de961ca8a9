"""Every aggregator (tests/aggregators/conformance.py) against the same contract, then each one's
own rule on hand-computed updates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from fedloom.aggregators import (
    Aggregator,
    CenteredClip,
    CoordinateMedian,
    EmptyAggregate,
    Krum,
    MultiKrum,
    NormBound,
    TrimmedMean,
    krum_scores,
)
from tests.aggregators.conformance import AGGREGATORS, IN_HULL, ROBUST

NAMES = sorted(AGGREGATORS)


def _run(
    agg: Aggregator, rows: Sequence[Any] | np.ndarray, weights: Sequence[float] | None = None
) -> np.ndarray:
    vecs = np.asarray(rows, np.float32)
    agg.begin(vecs.shape[1])
    for i, vec in enumerate(vecs):
        agg.add(vec, 1.0 if weights is None else weights[i])
    return agg.finish()


def _honest(n: int, seed: int = 0) -> np.ndarray:
    """``n`` small updates (norms well under 1) scattered around [0.2, -0.1, 0.05]."""
    rng = np.random.default_rng(seed)
    return (np.array([0.2, -0.1, 0.05]) + 0.02 * rng.standard_normal((n, 3))).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_identical_updates_aggregate_to_that_update(name: str) -> None:
    x = [0.25, -0.5, 0.0]
    out = _run(AGGREGATORS[name](), [x] * 5, [1, 2, 3, 4, 5])
    assert out.dtype == np.float32 and out.shape == (3,)
    np.testing.assert_allclose(out, x, rtol=0, atol=1e-7)
    np.testing.assert_allclose(_run(AGGREGATORS[name](), [x]), x, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_the_order_of_arrival_does_not_matter(name: str) -> None:
    rows = _honest(7)
    forward = _run(AGGREGATORS[name](), rows)
    backward = _run(AGGREGATORS[name](), rows[::-1])
    np.testing.assert_allclose(forward, backward, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_begin_starts_a_new_round_and_misuse_is_an_error(name: str) -> None:
    agg = AGGREGATORS[name]()
    with pytest.raises(RuntimeError, match="call begin"):
        agg.add(np.zeros(2, np.float32), 1.0)
    agg.begin(2)
    with pytest.raises(EmptyAggregate):
        agg.finish()
    agg.add(np.array([0.5, 0.5], np.float32), 1.0)
    agg.begin(2)
    agg.add(np.array([0.25, 0.0], np.float32), 1.0)
    assert agg.count == 1
    np.testing.assert_allclose(agg.finish(), [0.25, 0.0], atol=1e-7)


@pytest.mark.parametrize("name", sorted(IN_HULL))
def test_the_aggregate_lies_between_the_updates(name: str) -> None:
    rows = _honest(6, seed=3)
    out = _run(AGGREGATORS[name](), rows, [1, 5, 2, 1, 1, 3])
    assert (out >= rows.min(axis=0) - 1e-7).all() and (out <= rows.max(axis=0) + 1e-7).all()


@pytest.mark.parametrize("name", NAMES)
def test_one_malicious_update_among_five_moves_only_the_mean_far(name: str) -> None:
    honest = _honest(5, seed=1)
    attack = np.array([1e6, -1e6, 1e6], np.float32)
    out = _run(AGGREGATORS[name](), [*honest, attack])
    shift = float(np.linalg.norm(out - honest.mean(axis=0)))
    if name in ROBUST:
        assert shift < 0.5
    else:
        assert shift > 1e5


# -- each rule on hand-computed updates ----------------------------------------------------------
# A = [1, 0], B = [2, 4], C = [3, 1], D = [100, -50] (the outlier), E = [10, 2]
FIVE: list[list[float]] = [[1, 0], [2, 4], [3, 1], [100, -50], [10, 2]]


def test_median_is_the_middle_value_of_each_coordinate() -> None:
    # x: 1 2 [3] 10 100; y: -50 0 [1] 2 4
    np.testing.assert_array_equal(_run(CoordinateMedian(), FIVE, [9, 1, 1, 1, 1]), [3, 1])
    # an even count takes the mean of the two middle values: x: 1 [2 3] 100, y: -50 [0 1] 4
    np.testing.assert_array_equal(_run(CoordinateMedian(), FIVE[:4]), [2.5, 0.5])


def test_trimmed_mean_drops_k_values_at_each_end() -> None:
    # beta 0.2 of 5: k = 1; x: 2 3 10 -> 5; y: 0 1 2 -> 1
    np.testing.assert_array_equal(_run(TrimmedMean(0.2), FIVE), [5, 1])
    # beta 0 is the plain mean: x 116 / 5, y -43 / 5
    np.testing.assert_allclose(_run(TrimmedMean(0.0), FIVE), np.array([23.2, -8.6]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 0.5\)"):
        TrimmedMean(0.5)


def test_krum_scores_sum_the_n_minus_f_minus_2_nearest_squared_distances() -> None:
    # squared distances: AB 17, AC 5, AD 12301, AE 85, BC 10, BD 12520, BE 68, CD 12010,
    # CE 50, DE 10804; f = 1, so each score sums the 2 nearest
    scores = krum_scores(np.asarray(FIVE, np.float64), f=1)
    np.testing.assert_array_equal(scores, [22, 27, 15, 22814, 118])


def test_krum_picks_the_lowest_score_and_multikrum_averages_the_m_lowest() -> None:
    np.testing.assert_array_equal(_run(Krum(1), FIVE), [3, 1])  # C
    # m = n - f = 4: C, A, B, E -> x (1 + 2 + 3 + 10) / 4 = 4, y (0 + 4 + 1 + 2) / 4 = 1.75
    np.testing.assert_array_equal(_run(MultiKrum(1), FIVE), [4, 1.75])
    multi = MultiKrum(1, m=2)
    np.testing.assert_array_equal(_run(multi, FIVE), [2, 0.5])  # C and A
    assert multi.selected() == [0, 2]


def test_norm_bound_clips_each_update_then_takes_the_weighted_mean() -> None:
    # [3, 4] has norm 5 (kept), [0, 1] (kept), [30, -40] has norm 50 -> [3, -4]
    # weights 1, 2, 1: ([3, 4] + 2 [0, 1] + [3, -4]) / 4 = [1.5, 0.5]
    out = _run(NormBound(5.0), [[3, 4], [0, 1], [30, -40]], [1, 2, 1])
    np.testing.assert_allclose(out, [1.5, 0.5], rtol=1e-7)


def test_centered_clip_moves_by_the_mean_of_clipped_differences() -> None:
    # tau 1 from v0 = 0 over 0, 2, 10: differences clip to 0, 1, 1 -> v1 = 2/3;
    # then -2/3, 4/3, 28/3 clip to -2/3, 1, 1 -> v2 = 2/3 + (4/3) / 3 = 10/9
    out = _run(CenteredClip(tau=1.0, iters=2), [[0], [2], [10]])
    assert math.isclose(float(out[0]), 10 / 9, rel_tol=1e-6)
