"""The Gaussian-noise transform: each row's noise comes from its own generator, after the clip."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.transforms import STATE_PREFIX, apply_to_rows, build_pipeline

LOCAL_DP = [{"name": "clip", "max_norm": 1.0}, {"name": "gaussian_noise", "std": 0.5}]


def test_clip_then_noise_adds_each_rows_own_draws() -> None:
    rows = np.array([[3.0, 4.0, 0.0], [0.1, 0.2, 0.3]], np.float32)
    states: list[dict[str, np.ndarray]] = [{}, {}]

    out = apply_to_rows(
        LOCAL_DP, rows, states, {"round": 1}, [np.random.default_rng(s) for s in (1, 2)]
    )

    draws = [np.random.default_rng(s).standard_normal(3, dtype=np.float32) for s in (1, 2)]
    clipped = np.array([[0.6, 0.8, 0.0], [0.1, 0.2, 0.3]])
    np.testing.assert_allclose(out, clipped + 0.5 * np.stack(draws), rtol=1e-6, atol=1e-7)
    assert all(not any(k.startswith(STATE_PREFIX + "1/") for k in s) for s in states)


def test_a_rows_noise_does_not_depend_on_the_other_rows() -> None:
    rows = np.ones((3, 4), np.float32)
    alone = apply_to_rows(LOCAL_DP, rows[:1], [{}], {}, [np.random.default_rng(9)])
    together = apply_to_rows(
        LOCAL_DP, rows, [{}, {}, {}], {}, [np.random.default_rng(s) for s in (9, 1, 2)]
    )
    np.testing.assert_array_equal(alone[0], together[0])


def test_noise_needs_a_generator_per_row_and_a_valid_std() -> None:
    assert build_pipeline(LOCAL_DP).draws == 1
    with pytest.raises(ConfigError, match="draw random noise and need one generator per row"):
        apply_to_rows(LOCAL_DP, np.ones((1, 2), np.float32), [{}], {})
    with pytest.raises(ConfigError, match="std must be >= 0"):
        build_pipeline([{"name": "gaussian_noise", "std": -1.0}])
