"""Regression metrics on a four-point example."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from fedloom.metrics import regression_metrics

# residuals [0, 0, 0, -2]: SS_res = 4, mean 2.5, SS_tot = 2.25 + 0.25 + 0.25 + 2.25 = 5
Y_TRUE = np.array([1.0, 2.0, 3.0, 4.0])
Y_PRED = np.array([1.0, 2.0, 3.0, 6.0])


def test_hand_example() -> None:
    m = regression_metrics(Y_TRUE, Y_PRED)
    assert m == pytest.approx({"rmse": 1.0, "mae": 0.5, "r2": 1 / 5})


def test_target_scale_reports_original_units() -> None:
    m = regression_metrics(Y_TRUE, Y_PRED, target_scale=(10.0, 3.0))
    assert m == pytest.approx({"rmse": 3.0, "mae": 1.5, "r2": 1 / 5})
    # Same numbers as computing directly on de-standardised values.
    direct = regression_metrics(Y_TRUE * 3.0 + 10.0, Y_PRED * 3.0 + 10.0)
    assert m == pytest.approx(direct)


def test_column_vectors_accepted() -> None:
    m = regression_metrics(Y_TRUE[:, None], Y_PRED[:, None])
    assert m["rmse"] == pytest.approx(1.0)


def test_constant_target_r2_is_zero() -> None:
    assert regression_metrics([2.0, 2.0], [1.0, 3.0])["r2"] == 0.0
    assert regression_metrics([2.0, 2.0], [2.0, 2.0])["r2"] == 0.0


def test_no_examples() -> None:
    m = regression_metrics(np.zeros(0), np.zeros(0))
    assert np.isnan(m["rmse"])
    assert np.isnan(m["mae"])
    assert m["r2"] == 0.0


def test_matches_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(1)
    y, p = rng.normal(size=50), rng.normal(size=50)
    m = regression_metrics(y, p)
    assert m["rmse"] == pytest.approx(root_mean_squared_error(y, p))
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert m["r2"] == pytest.approx(r2_score(y, p))


@pytest.mark.parametrize(
    ("y_true", "y_pred", "scale", "match"),
    [
        ([1.0, 2.0], [1.0], None, "differ in length"),
        ([1.0], [1.0], (0.0, 0.0), "positive finite"),
        (np.zeros((2, 2)), np.zeros((2, 2)), None, r"shape \(n,\) or \(n, 1\)"),
    ],
)
def test_invalid_inputs_raise(
    y_true: list[float], y_pred: list[float], scale: tuple[float, float] | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        regression_metrics(y_true, y_pred, target_scale=scale)
