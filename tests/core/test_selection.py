"""Seeded client selection: size-proportional sampling and the ``strategy.sampling`` dispatch."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.core.selection import (
    poisson_sample,
    sample_clients,
    select_clients,
    size_proportional_sample,
)
from fedloom.errors import ConfigError


def _inclusion(sizes: dict[int, int], fraction: float, draws: int) -> dict[int, float]:
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(sizes, 0)
    for _ in range(draws):
        for cid in size_proportional_sample(list(sizes), sizes, fraction, 1, rng):
            counts[cid] += 1
    return {cid: n / draws for cid, n in counts.items()}


def test_one_client_a_round_is_drawn_in_proportion_to_its_size() -> None:
    # sizes 1 and 3, one client a round: P(client 1) = 3 / 4
    frequency = _inclusion({0: 1, 1: 3}, 0.5, 4000)
    assert frequency[1] == pytest.approx(0.75, abs=0.03)


def test_later_draws_are_proportional_among_the_clients_not_yet_drawn() -> None:
    # sizes 1, 1, 2, two a round. Client 2 is left out only if 0 and 1 are drawn:
    # (1/4 + 1/4) * 1/3 = 1/6. Client 0 is left out if 1 then 2 (1/4 * 2/3) or 2 then 1
    # (1/2 * 1/2): 5/12. Inclusion: 5/6 for client 2, 7/12 for clients 0 and 1.
    frequency = _inclusion({0: 1, 1: 1, 2: 2}, 2 / 3, 6000)
    assert frequency[2] == pytest.approx(5 / 6, abs=0.03)
    assert frequency[0] == pytest.approx(7 / 12, abs=0.03)
    assert frequency[1] == pytest.approx(7 / 12, abs=0.03)


def test_size_proportional_sampling_is_seeded_sorted_and_sized_like_fixed_sampling() -> None:
    sizes = {c: c + 1 for c in range(100)}
    a = size_proportional_sample(list(sizes), sizes, 0.1, 1, np.random.default_rng([0, 1]))
    b = size_proportional_sample(list(sizes), sizes, 0.1, 1, np.random.default_rng([0, 1]))
    assert a == b and a == sorted(a) and len(set(a)) == 10
    assert len(size_proportional_sample(list(sizes), sizes, 0.01, 5, np.random.default_rng(0))) == 5
    assert size_proportional_sample([3, 1, 2], sizes, 1.0, 1, np.random.default_rng(0)) == [1, 2, 3]


def test_size_proportional_sampling_refuses_too_few_clients_and_clients_without_a_size() -> None:
    with pytest.raises(ConfigError, match=r"min_fit_clients=5 but only 3 clients"):
        size_proportional_sample([0, 1, 2], {0: 1, 1: 1, 2: 1}, 1.0, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"clients \[1\] have no training-set size"):
        size_proportional_sample([0, 1], {0: 4}, 0.5, 1, np.random.default_rng(0))


def test_select_clients_follows_strategy_sampling() -> None:
    eligible, sizes = list(range(20)), {c: 1 + 5 * c for c in range(20)}

    def pick(sampling: str) -> list[int]:
        return select_clients(sampling, eligible, 0.25, 1, np.random.default_rng(7), sizes)

    assert pick("fixed") == sample_clients(eligible, 0.25, 1, np.random.default_rng(7))
    assert pick("poisson") == poisson_sample(eligible, 0.25, np.random.default_rng(7))
    assert pick("size") == size_proportional_sample(
        eligible, sizes, 0.25, 1, np.random.default_rng(7)
    )
    with pytest.raises(ConfigError, match=r"strategy\.sampling='weighted': allowed"):
        pick("weighted")
