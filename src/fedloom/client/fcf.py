"""Federated collaborative filtering: matrix factorisation whose user factors never leave the client.

Ammad-ud-din, Ivannikova, Khan, Oyomno, Fu, Tan and Flanagan, "Federated Collaborative Filtering
for Privacy-Preserving Personalized Recommendation System", arXiv:1901.09888, 2019. The server
holds the item factors; each user's client updates its own user factor locally, computes the
change of the item factors its ratings call for, and sends only that, for only the items it
rated (``FitResult.rows``: the upload is row-sparse, :class:`fedloom.strategies.fcf.FederatedCF`).

The prediction of user ``u``'s rating of item ``i`` is ``b_u + b_i + p_u . q_i``. The model that
travels is the item-factor matrix ``Q`` (``num_items x rank``) and the item biases ``b``; the user
factor ``p_u`` and user bias ``b_u`` live in the client state (``ClientContext.state``, kept by the
engine between rounds and never uploaded). A local epoch is one full-batch gradient step on the
user's squared errors with the L2 penalty ``reg`` on the user factor, item factors and item biases
(the user bias starts at the user's mean rating and is not penalised): the user's parameters step
on the mean over its ratings, each rated item's row on the gradient of its one rating, both with
learning rate ``lr``.
Items the user did not rate do not change and are not sent.

A client may hold several users (:class:`FCFClient` takes a list): the centralised baseline is one
client holding every user. An epoch of such a client steps every user from the same item
parameters and moves each item row by the mean of the changes of the users who rated it
(:func:`row_mean_epoch`), which is what one round of ``FederatedCF`` does with every user taking
part and one local epoch (tested): federated training with full participation is centralised
full-batch training.

Differences from the paper: explicit ratings with biases (its experiments use implicit feedback);
the user factor takes gradient steps instead of its closed-form least-squares update; the server
averages each item row over the users who rated it instead of summing (``fedloom.strategies.fcf``
says why); and a client may run several local epochs.

Evaluation reports, over the client's held-out ratings, ``loss`` (MSE), ``rmse`` and ``mae``, and
ranks every item a user did not rate in training by its prediction for ``hit_rate_at_10`` and
``ndcg_at_10`` of the user's held-out items (:func:`ranking_metrics`). A client with several users
pools them as federated evaluation pools clients (``fedloom.metrics.pooled_metrics``: means weighted
by held-out ratings; RMSE as the root of the pooled MSE).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedloom.client.base import ClientContext, EvalResult, FitResult
from fedloom.core.params import Params
from fedloom.metrics.pooled import pooled_metrics

__all__ = [
    "ITEM_BIAS",
    "ITEM_FACTORS",
    "USER_BIAS",
    "USER_FACTOR",
    "FCFClient",
    "UserRatings",
    "init_item_params",
    "init_user",
    "ranking_metrics",
    "row_mean_epoch",
    "user_step",
]

ITEM_FACTORS = "item_factors"
ITEM_BIAS = "item_bias"
USER_FACTOR = "user_factor"
USER_BIAS = "user_bias"

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

TOP_K = 10
"""The ``k`` of the ranking metrics ``hit_rate_at_10`` and ``ndcg_at_10``."""


def init_item_params(num_items: int, rank: int, seed: int, scale: float = 0.1) -> Params:
    """``Q ~ N(0, scale^2)`` (seeded) and zero item biases: the global model before round 1."""
    rng = np.random.default_rng([seed, 0xFCF])
    return {
        ITEM_FACTORS: (rng.standard_normal((num_items, rank)) * scale).astype(np.float32),
        ITEM_BIAS: np.zeros(num_items, np.float32),
    }


def init_user(
    rank: int, seed: int, user: int, ratings: FloatArray, scale: float = 0.1
) -> dict[str, np.ndarray]:
    """A user's first factor (seeded by user) and bias (the mean of its training ratings)."""
    rng = np.random.default_rng([seed, user, 0xFCF])
    bias = float(ratings.mean()) if ratings.size else 0.0
    return {
        USER_FACTOR: (rng.standard_normal(rank) * scale).astype(np.float32),
        USER_BIAS: np.array([bias], np.float32),
    }


def predict(
    user: Mapping[str, np.ndarray], q: FloatArray, b: FloatArray, items: IntArray
) -> FloatArray:
    """``b_u + b_i + p_u . q_i`` for each item."""
    out = user[USER_BIAS][0] + b[items] + q[items] @ user[USER_FACTOR]
    return np.asarray(out, np.float32)


def user_step(
    user: Mapping[str, np.ndarray],
    q: FloatArray,
    b: FloatArray,
    items: IntArray,
    ratings: FloatArray,
    *,
    lr: float,
    reg: float,
) -> tuple[dict[str, np.ndarray], FloatArray, FloatArray, float]:
    """One full-batch step on one user's ratings (a user rates an item once): the user's new
    parameters, the changes of the rows ``items`` of ``q`` and ``b``, and the mean squared error
    before the step. Nothing is changed in place."""
    p, bu = user[USER_FACTOR], user[USER_BIAS]
    qi = q[items]
    err = ratings - (bu[0] + b[items] + qi @ p)
    n = max(len(items), 1)
    grad_p = -(err @ qi) / n + reg * p
    grad_bu = -float(err.sum()) / n
    dq = -lr * (-err[:, None] * p[None, :] + reg * qi)
    db = lr * (err - reg * b[items])
    new = {
        USER_FACTOR: (p - lr * grad_p).astype(np.float32),
        USER_BIAS: (bu - lr * grad_bu).astype(np.float32),
    }
    mse = float((err**2).mean()) if len(items) else 0.0
    return new, dq.astype(np.float32), db.astype(np.float32), mse


def row_mean_epoch(
    users: list[dict[str, np.ndarray]],
    q: FloatArray,
    b: FloatArray,
    data: Sequence[tuple[IntArray, FloatArray]],
    *,
    lr: float,
    reg: float,
) -> float:
    """One epoch over several users, in place on ``users``, ``q`` and ``b``: every user steps
    from the same ``q, b`` (:func:`user_step`), and each item row moves by the mean of the
    changes of the users who rated it. Returns the mean squared error before it, over all
    ratings. With one user this is that user's own step."""
    # only the rated rows are worked on: a user rates a few dozen of thousands of items
    rated = np.unique(np.concatenate([items for items, _ in data])) if data else np.zeros(0, int)
    dq = np.zeros((len(rated), q.shape[1]), np.float32)
    db = np.zeros(len(rated), np.float32)
    raters = np.zeros(len(rated), np.int64)
    sse, count = 0.0, 0
    for k, (items, ratings) in enumerate(data):
        users[k], dq_u, db_u, mse = user_step(users[k], q, b, items, ratings, lr=lr, reg=reg)
        at = np.searchsorted(rated, items)
        dq[at] += dq_u
        db[at] += db_u
        raters[at] += 1
        sse += mse * len(items)
        count += len(items)
    scale = (1.0 / raters).astype(np.float32)
    q[rated] += dq * scale[:, None]
    b[rated] += db * scale
    return sse / count if count else 0.0


@dataclass(frozen=True)
class UserRatings:
    """One user's training and held-out ratings (item indices and values)."""

    user: int
    items_train: IntArray
    ratings_train: FloatArray
    items_test: IntArray
    ratings_test: FloatArray


@dataclass
class FCFClient:
    """The client of one user (or, for the centralised baseline, of several). ``config`` keys:
    ``epochs`` (local epochs), ``lr`` and ``reg`` (the L2 penalty); the fields are defaults."""

    users: Sequence[UserRatings]
    epochs: int = 1
    lr: float = 0.5
    reg: float = 0.05
    seed: int = 0

    @property
    def num_examples(self) -> int:
        """The training ratings (what a deployment client reports when it joins)."""
        return sum(len(u.ratings_train) for u in self.users)

    @property
    def num_test_examples(self) -> int:
        """The held-out ratings: a client without any is not asked to evaluate."""
        return sum(len(u.ratings_test) for u in self.users)

    def _users(self, rank: int, context: ClientContext) -> list[dict[str, np.ndarray]]:
        if USER_FACTOR in context.state:
            factors, biases = context.state[USER_FACTOR], context.state[USER_BIAS]
            return [
                {USER_FACTOR: factors[k], USER_BIAS: biases[k : k + 1]}
                for k in range(len(self.users))
            ]
        return [init_user(rank, self.seed, u.user, u.ratings_train) for u in self.users]

    def fit(self, params: Params, config: Mapping[str, Any], context: ClientContext) -> FitResult:
        q0, b0 = params[ITEM_FACTORS], params[ITEM_BIAS]
        q, b = q0.astype(np.float32, copy=True), b0.astype(np.float32, copy=True)
        users = self._users(q.shape[1], context)
        data = [(u.items_train, u.ratings_train) for u in self.users]
        loss = 0.0
        for _ in range(int(config.get("epochs", self.epochs))):
            loss = row_mean_epoch(
                users, q, b, data,
                lr=float(config.get("lr", self.lr)), reg=float(config.get("reg", self.reg)),
            )  # fmt: skip
        # the users' parameters stay here, in the client state
        context.state[USER_FACTOR] = np.stack([u[USER_FACTOR] for u in users])
        context.state[USER_BIAS] = np.concatenate([u[USER_BIAS] for u in users])
        touched = np.zeros(len(b), dtype=bool)
        for items, _ in data:
            touched[items] = True
        return FitResult(
            update={ITEM_FACTORS: q - q0, ITEM_BIAS: b - b0},
            num_examples=self.num_examples,
            metrics={"train_loss": loss},
            rows=touched,
        )

    def evaluate(
        self, params: Params, config: Mapping[str, Any], context: ClientContext
    ) -> EvalResult:
        q, b = params[ITEM_FACTORS], params[ITEM_BIAS]
        per_user = []
        for user, data in zip(self._users(q.shape[1], context), self.users, strict=True):
            n = len(data.ratings_test)
            if n == 0:
                continue
            err = data.ratings_test - predict(user, q, b, data.items_test)
            mse = float((err**2).mean())
            metrics = {"loss": mse, "rmse": mse**0.5, "mae": float(np.abs(err).mean())}
            scores = predict(user, q, b, np.arange(len(b)))
            metrics.update(ranking_metrics(scores, data.items_train, data.items_test, TOP_K))
            per_user.append((n, metrics))
        pooled = pooled_metrics(per_user)
        n_test = sum(n for n, _ in per_user)
        return EvalResult(loss=pooled.pop("loss", 0.0), num_examples=n_test, metrics=pooled)


def ranking_metrics(
    scores: FloatArray, seen: IntArray, relevant: IntArray, k: int = TOP_K
) -> dict[str, float]:
    """Hit rate and NDCG at ``k`` of the items ranked by ``scores``, leaving out the ``seen``
    (training) items; the ``relevant`` items are the user's held-out ones (binary relevance).

    ``hit_rate_at_k``: the fraction of the relevant items in the top ``k``, out of at most ``k``
    (``|top k & relevant| / min(k, |relevant|)``); ``ndcg_at_k``: ``sum 1/log2(rank+1)`` over
    the relevant items in the top ``k``, over its best possible value."""
    candidates = np.setdiff1d(np.arange(len(scores)), seen)
    top = candidates[np.lexsort((candidates, -scores[candidates]))][:k]  # ties: smaller id first
    hits = np.isin(top, relevant)
    best = min(k, len(relevant))
    discounts = 1.0 / np.log2(np.arange(2, max(len(top), best) + 2))
    return {
        f"hit_rate_at_{k}": float(hits.sum()) / best,
        f"ndcg_at_{k}": float(discounts[: len(top)][hits].sum() / discounts[:best].sum()),
    }
