"""Gradual magnitude pruning (Zhu and Gupta 2017): the schedule, the global mask, and a pruned run."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.config import load_config
from fedloom.core.params import ParamSpec
from fedloom.errors import ConfigError
from fedloom.server.pruning import (
    MASK_STATE,
    PruningSchedule,
    magnitude_mask,
    mask_for_round,
    prunable,
    sparsity_of,
)
from fedloom.simulation import Simulation

SPEC = ParamSpec(names=("w", "b"), shapes=((2, 2), (2,)), dtypes=("float32", "float32"))


def test_the_cubic_schedule_rises_fast_then_slowly_to_the_target() -> None:
    schedule = PruningSchedule(0.8, start_round=2, end_round=6, every=2)

    # s = 0.8 * (1 - (1 - (r - 2) / 4) ** 3): 0 at round 2, 0.8 * 7/8 = 0.7 at 4, 0.8 at 6
    assert [schedule.prunes_at(r) for r in range(1, 9)] == [
        False, True, False, True, False, True, False, False
    ]  # fmt: skip
    assert schedule.sparsity(2) == 0.0
    assert schedule.sparsity(4) == pytest.approx(0.7)
    assert schedule.sparsity(6) == pytest.approx(0.8)
    assert schedule.sparsity(9) == pytest.approx(0.8)


def test_the_target_is_reached_at_end_round_off_the_every_grid() -> None:
    schedule = PruningSchedule(0.5, start_round=1, end_round=4, every=2)

    assert [r for r in range(1, 7) if schedule.prunes_at(r)] == [1, 3, 4]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.0, 1, 2), "target_sparsity"),
        ((0.5, 0, 2), "start_round"),
        ((0.5, 3, 2), "end_round"),
    ],
)
def test_a_bad_schedule_is_refused(args: tuple[float, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PruningSchedule(*args)


def test_the_global_mask_prunes_the_smallest_weights_and_never_the_biases() -> None:
    params = np.array([0.5, -0.1, 0.3, 0.05, 0.0, 0.001], np.float32)

    keep = magnitude_mask(params, prunable(SPEC), 0.5)

    # the two smallest of |w| = (0.5, 0.1, 0.3, 0.05) go; the bias (0.0, 0.001) stays
    assert keep.tolist() == [True, False, True, False, True, True]
    assert sparsity_of(keep, SPEC) == 0.5


def test_a_pruned_weight_stays_pruned_and_ties_go_to_the_lower_index() -> None:
    previous = np.array([True, True, False, True, True, True])
    params = np.array([0.2, 0.2, 0.9, 0.2, 1.0, 1.0], np.float32)

    keep = magnitude_mask(params, prunable(SPEC), 0.5, previous)

    # entry 2 stays pruned despite its magnitude; of the tied 0.2s, entry 0 goes
    assert keep.tolist() == [False, True, False, True, True, True]


def test_the_mask_is_kept_in_the_state_between_pruning_steps() -> None:
    schedule = PruningSchedule(0.5, start_round=1, end_round=2, every=1)
    params = np.array([0.5, -0.1, 0.3, 0.05, 0.0, 0.0], np.float32)
    state: dict[str, np.ndarray] = {}

    assert mask_for_round(schedule, 1, params, SPEC, state) is None  # sparsity 0: no mask yet
    at_two = mask_for_round(schedule, 2, params, SPEC, state)
    at_three = mask_for_round(schedule, 3, params * 0 + 1, SPEC, state)

    assert at_two is not None and at_three is not None
    assert at_two.tolist() == at_three.tolist() == [True, False, True, False, True, True]
    assert state[MASK_STATE].tolist() == [1, 0, 1, 0, 1, 1]


def test_a_pruned_run_reports_sparsity_and_sends_the_mask_once() -> None:
    cfg = load_config(
        overrides=[
            "rounds=4",
            "partition.num_clients=5",
            "client.epochs=1",
            "engine.name=sequential",
            "pruning.enabled=true",
            "pruning.target_sparsity=0.5",
            "pruning.start_round=1",
            "pruning.end_round=3",
        ]
    )
    sim = Simulation(cfg)
    coordinator = sim.coordinator()

    history = coordinator.run(4)

    support = coordinator.strategy_state[MASK_STATE] > 0.5
    kept, size, clients = int(support.sum()), sim.spec.size, 5
    mask_bytes = -(-size // 8)
    # round 1 prunes nothing; round 2 sends a new mask and the model under it; round 3 a new mask;
    # round 4 reuses the mask of round 3, so only the kept values travel, both ways
    assert [r["sparsity"] for r in history] == pytest.approx([0, 0.4375, 0.5, 0.5])
    assert history[0]["bytes_down"] == history[0]["bytes_up"] == clients * 4 * size
    assert history[3]["bytes_down"] == history[3]["bytes_up"] == clients * 4 * kept
    assert history[2]["bytes_down"] == clients * (4 * kept + mask_bytes)
    assert history[3]["compression_ratio_up"] == pytest.approx(size / kept)
    assert not coordinator.params[~support].any()
    assert sparsity_of(support, sim.spec) == 0.5


def test_pruning_that_would_start_after_the_last_round_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"pruning.start_round \(5\) is after the last round"):
        load_config(overrides=["rounds=4", "pruning.enabled=true", "pruning.start_round=5"])


def test_bitmask_is_not_an_update_codec() -> None:
    with pytest.raises(ConfigError, match="bitmask encodes pruning masks"):
        load_config(overrides=["transport.upload=[bitmask]"])
