"""The MovieLens loader: counts of the real dslabs table and the per-user split by time."""

from __future__ import annotations

import numpy as np

from fedloom.data.movielens import load_movielens, split_by_time


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
