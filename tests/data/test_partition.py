"""Partitioners: exact sizes on hand-computable inputs, and the label skew each scheme promises."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

from fedloom.data import (
    PARTITION_KINDS,
    dirichlet,
    format_label_distribution,
    iid,
    label_distribution,
    natural,
    partition,
    plot_label_distribution,
    quantity,
    shards,
)
from fedloom.errors import ConfigError

# 10 classes x 100 rows, ordered by class.
BALANCED_LABELS = np.repeat(np.arange(10), 100)


def assert_disjoint_cover(parts: list[npt.NDArray[np.int64]], num_samples: int) -> None:
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "indices must be sorted and unique"
    merged = np.concatenate(parts)
    assert len(merged) == num_samples, "clients overlap or miss rows"
    np.testing.assert_array_equal(np.sort(merged), np.arange(num_samples))


def class_shares(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.float64]:
    counts = label_distribution(BALANCED_LABELS, parts, 10)
    shares: npt.NDArray[np.float64] = counts / counts.sum(axis=1, keepdims=True)
    return shares


# --- iid ---------------------------------------------------------------------------------------


def test_iid_sizes_are_as_even_as_possible() -> None:
    parts = iid(10, 3, np.random.default_rng(0))

    assert [len(part) for part in parts] == [4, 3, 3]
    assert_disjoint_cover(parts, 10)


def test_iid_label_mix_matches_global_mix() -> None:
    labels = np.arange(10_000) % 4  # global share of every class is exactly 1/4
    parts = iid(len(labels), 10, np.random.default_rng(0))

    counts = label_distribution(labels, parts, 4)

    assert counts.sum(axis=1).tolist() == [1000] * 10
    # Binomial(1000, 1/4) share has std 0.0137; 0.05 is more than 3.6 std.
    assert np.abs(counts / 1000 - 0.25).max() < 0.05


def test_iid_is_reproducible_and_seed_dependent() -> None:
    first = iid(100, 4, np.random.default_rng(7))
    again = iid(100, 4, np.random.default_rng(7))
    other = iid(100, 4, np.random.default_rng(8))

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


# --- dirichlet ---------------------------------------------------------------------------------


def test_dirichlet_small_alpha_skews_labels_far_more_than_large_alpha() -> None:
    skewed = class_shares(dirichlet(BALANCED_LABELS, 10, 0.05, np.random.default_rng(0)))
    mixed = class_shares(dirichlet(BALANCED_LABELS, 10, 100.0, np.random.default_rng(0)))

    # Mean share of each client's largest class: 1.0 is one class per client, 0.1 is uniform.
    assert skewed.max(axis=1).mean() > 0.5
    assert mixed.max(axis=1).mean() < 0.25
    # Mean number of classes a client holds.
    assert (skewed > 0).sum(axis=1).mean() < 5
    assert (mixed > 0).sum(axis=1).mean() == 10


def test_dirichlet_large_alpha_approaches_global_proportions() -> None:
    shares = class_shares(dirichlet(BALANCED_LABELS, 10, 1000.0, np.random.default_rng(0)))

    total_variation = 0.5 * np.abs(shares - 0.1).sum(axis=1)
    assert total_variation.max() < 0.06


def test_dirichlet_is_disjoint_covering_and_reproducible() -> None:
    parts = dirichlet(BALANCED_LABELS, 7, 0.3, np.random.default_rng(3))
    again = dirichlet(BALANCED_LABELS, 7, 0.3, np.random.default_rng(3))

    assert_disjoint_cover(parts, len(BALANCED_LABELS))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_honours_min_size() -> None:
    parts = dirichlet(BALANCED_LABELS, 20, 0.5, np.random.default_rng(0), min_size=20)

    assert min(len(part) for part in parts) >= 20
    assert_disjoint_cover(parts, len(BALANCED_LABELS))


def test_dirichlet_gives_up_with_advice_when_min_size_is_unreachable() -> None:
    labels = np.repeat([0, 1], 50)  # two classes: tiny alpha feeds only about two clients

    advice = r"in 5 draws with alpha=0\.01.*increase partition\.alpha"
    with pytest.raises(ConfigError, match=advice):
        dirichlet(labels, 40, 0.01, np.random.default_rng(0), min_size=2, max_attempts=5)


def test_dirichlet_rejects_impossible_requests() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="alpha must be a positive number, got 0"):
        dirichlet(BALANCED_LABELS, 10, 0.0, rng)
    with pytest.raises(ConfigError, match="needs 1100 samples, but there are 1000"):
        dirichlet(BALANCED_LABELS, 10, 1.0, rng, min_size=110)
    with pytest.raises(ConfigError, match=r"num_clients \(1001\) is larger"):
        dirichlet(BALANCED_LABELS, 1001, 1.0, rng)
    with pytest.raises(ConfigError, match=r"integer class labels.*iid, quantity or natural"):
        dirichlet(np.linspace(0, 1, 50), 2, 1.0, rng)


# --- shards ------------------------------------------------------------------------------------


def test_shards_each_client_gets_exactly_two_whole_labels() -> None:
    # Labels 0..9, two rows each (20 rows): 5 clients x 2 shards = 10 shards of 2 rows, and
    # after sorting by label each shard is both rows of one label. So every client holds
    # exactly 2 distinct labels, 2 rows of each.
    labels = np.repeat(np.arange(10), 2)
    np.random.default_rng(0).shuffle(labels)

    parts = shards(labels, 5, 2, np.random.default_rng(0))

    counts = label_distribution(labels, parts, 10)
    assert [len(part) for part in parts] == [4] * 5
    assert ((counts > 0).sum(axis=1) == 2).all()
    assert set(counts.ravel().tolist()) == {0, 2}
    assert_disjoint_cover(parts, 20)


def test_shards_at_most_two_labels_per_client_on_mcmahan_layout() -> None:
    # 4 classes x 10 rows, 4 clients x 2 shards = 8 shards of 5: every shard is pure.
    labels = np.repeat(np.arange(4), 10)

    parts = shards(labels, 4, 2, np.random.default_rng(1))

    counts = label_distribution(labels, parts, 4)
    assert [len(part) for part in parts] == [10] * 4
    assert ((counts > 0).sum(axis=1) <= 2).all()
    assert set(counts.ravel().tolist()) <= {0, 5, 10}
    assert counts.sum(axis=0).tolist() == [10] * 4


def test_shards_keep_every_row_when_not_divisible() -> None:
    labels = np.arange(41) % 3
    parts = shards(labels, 4, 2, np.random.default_rng(0))

    # 8 shards of 41 rows: one shard of 6 and seven of 5, so sizes are 10 or 11.
    assert sorted(len(part) for part in parts) == [10, 10, 10, 11]
    assert_disjoint_cover(parts, 41)


def test_shards_rejects_too_many_shards() -> None:
    with pytest.raises(ConfigError, match="4 clients x 3 shards = 12 shards, more than the 10"):
        shards(np.zeros(10, dtype=np.int64), 4, 3, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="shards_per_client must be >= 1"):
        shards(np.zeros(10, dtype=np.int64), 2, 0, np.random.default_rng(0))


# --- quantity ----------------------------------------------------------------------------------


def test_quantity_with_zero_sigma_is_even_by_largest_remainders() -> None:
    even = quantity(100, 4, np.random.default_rng(0), sigma=0.0)
    # 10 rows, 4 clients: 1 each, then 6 more at 1.5 each -> floors of 1 and the 2 leftover
    # rows to the first two clients (equal remainders break ties by client order).
    uneven = quantity(10, 4, np.random.default_rng(0), sigma=0.0)

    assert [len(part) for part in even] == [25, 25, 25, 25]
    assert [len(part) for part in uneven] == [3, 3, 2, 2]


@pytest.mark.parametrize("distribution", ["lognormal", "power_law"])
def test_quantity_sizes_sum_to_n_and_are_positive(
    distribution: Literal["lognormal", "power_law"],
) -> None:
    parts = quantity(1000, 50, np.random.default_rng(0), distribution, sigma=3.0)

    assert min(len(part) for part in parts) >= 1
    assert_disjoint_cover(parts, 1000)


def test_quantity_larger_sigma_spreads_sizes_much_more() -> None:
    def coefficient_of_variation(sigma: float) -> float:
        parts = quantity(10_000, 50, np.random.default_rng(0), sigma=sigma)
        sizes = np.array([len(part) for part in parts])
        return float(sizes.std() / sizes.mean())

    # Population values: sqrt(exp(sigma^2) - 1) = 7.3 for sigma=2, 0.10 for sigma=0.1.
    assert coefficient_of_variation(2.0) > 1.0
    assert coefficient_of_variation(0.1) < 0.2


def test_quantity_one_row_per_client_when_clients_equal_rows() -> None:
    parts = quantity(5, 5, np.random.default_rng(0), sigma=2.0)

    assert [len(part) for part in parts] == [1] * 5


def test_quantity_rejects_unknown_distribution() -> None:
    with pytest.raises(ConfigError, match="'lognormal' or 'power_law', got 'zipf'"):
        quantity(10, 2, np.random.default_rng(0), "zipf")  # type: ignore[arg-type]


# --- natural -----------------------------------------------------------------------------------


def test_natural_one_client_per_group_in_sorted_order() -> None:
    parts = natural(np.array(["b", "a", "c", "a", "b", "b"]))

    assert [part.tolist() for part in parts] == [[1, 3], [0, 4, 5], [2]]


def test_natural_sorts_integer_groups_numerically() -> None:
    parts = natural(np.array([10, 2, 10, 3]))

    assert [part.tolist() for part in parts] == [[1], [3], [0, 2]]


# --- partition dispatcher ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", PARTITION_KINDS)
def test_every_kind_is_disjoint_covering_and_seeded(kind: str) -> None:
    groups = np.arange(len(BALANCED_LABELS)) % 8
    parts = partition(kind, BALANCED_LABELS, 8, seed=5, groups=groups)
    again = partition(kind, BALANCED_LABELS, 8, seed=5, groups=groups)

    assert len(parts) == 8
    assert_disjoint_cover(parts, len(BALANCED_LABELS))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "random"}, "unknown partition 'random'; choose one of: iid, dirichlet"),
        ({"kind": "dirichlet", "alpha": -1.0}, "alpha must be a positive number, got -1.0"),
        ({"num_clients": 0}, "num_clients must be >= 1, got 0"),
        ({"num_clients": 1001}, r"num_clients \(1001\) is larger than .* \(1000\)"),
        ({"num_clients": 2.5}, "num_clients must be an integer, got 2.5"),
        ({"kind": "natural"}, "needs a group id per training row"),
        ({"kind": "natural", "groups": np.arange(1000) % 3}, "has 3 groups; set num_clients to 3"),
        ({"kind": "natural", "groups": np.arange(5)}, "give one group id per training row"),
        ({"kind": "shards", "shards_per_client": 200}, "2000 shards, more than the 1000"),
        ({"kind": "quantity", "quantity_distribution": "zipf"}, "got 'zipf'"),
        ({"kind": "quantity", "quantity_sigma": -1.0}, "quantity_sigma must be >= 0"),
    ],
)
def test_partition_rejects_bad_config(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"kind": "iid", "num_clients": 10, **kwargs}

    with pytest.raises(ConfigError, match=message):
        partition(labels=BALANCED_LABELS, seed=0, **arguments)  # type: ignore[arg-type]


def test_partition_natural_matches_natural() -> None:
    groups = np.array([2, 0, 2, 1, 0])

    parts = partition("natural", np.zeros(5, dtype=np.int64), 3, seed=0, groups=groups)

    assert [part.tolist() for part in parts] == [[1, 4], [3], [0, 2]]


# --- inspection --------------------------------------------------------------------------------


def test_label_distribution_counts_exactly() -> None:
    counts = label_distribution([0, 1, 1, 2], [np.array([0, 1]), np.array([2, 3])], 3)

    assert counts.tolist() == [[1, 1, 0], [0, 1, 1]]
    assert counts.dtype == np.int64


def test_label_distribution_rejects_labels_beyond_num_classes() -> None:
    with pytest.raises(ConfigError, match="label 3 is out of range for num_classes=3"):
        label_distribution([0, 3], [np.array([0, 1])], 3)


def test_format_label_distribution_exact_table() -> None:
    text = format_label_distribution(np.array([[1, 1, 0], [0, 1, 1]]))

    assert text == (
        "client  size  0  1  2  classes\n"
        "     0     2  1  1  0        2\n"
        "     1     2  0  1  1        2\n"
        "   all     4  1  2  1        3\n"
        "2 clients, 4 samples; size min 2 / median 2 / max 2; "
        "classes per client min 2 / mean 2.00 / max 2"
    )


def test_format_label_distribution_summarises_many_clients() -> None:
    counts = np.tile([[3, 0]], (30, 1))
    counts[29] = [0, 7]

    lines = format_label_distribution(counts, max_rows=4).splitlines()

    assert [line.split()[0] for line in lines[1:6]] == ["0", "1", "...", "28", "29"]
    assert lines[6].split() == ["all", "94", "87", "7", "2"]
    assert lines[-1] == "(26 clients not shown)"


def test_plot_label_distribution_writes_png(tmp_path: Path) -> None:
    counts = label_distribution(BALANCED_LABELS, iid(1000, 5, np.random.default_rng(0)), 10)

    out = plot_label_distribution(counts, tmp_path / "labels.png")

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
