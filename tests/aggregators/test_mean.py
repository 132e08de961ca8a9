import numpy as np
import pytest

from fedloom.aggregators import EmptyAggregate, Sum, WeightedMean


def test_weighted_mean_by_num_examples() -> None:
    agg = WeightedMean()
    agg.begin(2)
    agg.add(np.array([2.0, 0.0], np.float32), 1)
    agg.add(np.array([0.0, 4.0], np.float32), 3)
    # (1*[2,0] + 3*[0,4]) / 4 = [0.5, 3]
    np.testing.assert_array_equal(agg.finish(), [0.5, 3.0])
    assert agg.count == 2


def test_unweighted_mean_and_sum() -> None:
    mean, total = WeightedMean(weighted=False), Sum()
    for agg in (mean, total):
        agg.begin(2)
        agg.add(np.array([2.0, 0.0], np.float32), 1)
        agg.add(np.array([0.0, 4.0], np.float32), 3)
    np.testing.assert_array_equal(mean.finish(), [1.0, 2.0])
    np.testing.assert_array_equal(total.finish(), [2.0, 4.0])


def test_empty_aggregate_is_an_error() -> None:
    agg = WeightedMean()
    agg.begin(2)
    with pytest.raises(EmptyAggregate, match="0 updates, total weight 0"):
        agg.finish()
    agg.add(np.ones(2, np.float32), 0)  # a client with no examples carries no weight
    with pytest.raises(EmptyAggregate, match="1 updates, total weight 0"):
        agg.finish()
    with pytest.raises(EmptyAggregate, match="no updates"):
        Sum().finish()
