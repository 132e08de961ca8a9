"""Federated collaborative filtering: matrix factorisation whose user factors never leave the client.

Ammad-ud-din, Ivannikova, Khan, Oyomno, Fu, Tan and Flanagan, "Federated Collaborative Filtering
for Privacy-Preserving Personalized Recommendation System", arXiv:1901.09888, 2019. The server
holds the item factors; each user's client updates its own user factor locally, computes the
gradient of its loss with respect to the item factors, and sends only that; the server adds the
users' gradients up and steps the item factors.

Differences here: explicit ratings with biases (the paper's experiments use implicit feedback);
the user factor takes gradient steps instead of the paper's closed-form least-squares update; and
a client may run several local epochs and sends the change of the item parameters (with one epoch
that change is ``-lr`` times the paper's gradient). The prediction of user
``u``'s rating of item ``i`` is ``b_u + b_i + p_u . q_i``. The model that travels is the item-factor
matrix ``Q`` (``num_items x rank``) and the item biases ``b``; the user factor ``p_u`` and user bias
``b_u`` live in the client state (``ClientContext.state``, kept by the engine between rounds and
never uploaded). A local epoch is one full-batch gradient step on the user's squared errors with L2
penalty ``reg``: the user's parameters step on the mean over its ratings (``user_lr``), the item rows
it rated on the sum (``lr``), as one epoch of stochastic gradient descent over ratings moves them.
Items the user did not rate do not change, so their delta is zero (the upload is dense: sending
only the touched rows is not implemented). The server sums the deltas (the paper's
``Q <- Q - gamma * sum_u grad_u``): FedAvg with an unweighted mean and a server learning rate equal
to the number of clients of a round (``bench/movielens.py``). With every user in every round and one local epoch this is exactly
full-batch training on the pooled ratings (:func:`central_epoch`), the paper's point.

Evaluation reports ``sse`` (summed squared error on the user's held-out ratings), ``rmse``
(the user's own) and ``mae``; a pooled RMSE is ``sqrt(sum sse / sum n)``. It also ranks every item
the user did not rate in training by its prediction and reports ``hit_rate_at_10`` and
``ndcg_at_10`` of the held-out items (:func:`ranking_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedloom.client.base import ClientContext, EvalResult, FitResult
from fedloom.core.params import Params

__all__ = [
    "ITEM_BIAS",
    "ITEM_FACTORS",
    "USER_BIAS",
    "USER_FACTOR",
    "FCFClient",
    "central_epoch",
    "init_item_params",
    "local_epoch",
    "ranking_metrics",
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


def local_epoch(
    user: dict[str, np.ndarray],
    q: FloatArray,
    b: FloatArray,
    items: IntArray,
    ratings: FloatArray,
    *,
    lr: float,
    user_lr: float,
    reg: float,
) -> float:
    """One full-batch step on one user's ratings, in place on ``user``, ``q`` and ``b`` (the rows
    in ``items`` only; a user rates an item once). Returns the mean squared error before it."""
    p, bu = user[USER_FACTOR], user[USER_BIAS]
    qi = q[items]
    err = ratings - (bu[0] + b[items] + qi @ p)
    n = max(len(items), 1)
    grad_p = -(err @ qi) / n + reg * p
    grad_bu = -float(err.sum()) / n
    q[items] = qi - lr * (-err[:, None] * p[None, :] + reg * qi)
    b[items] = b[items] + lr * err
    user[USER_FACTOR] = (p - user_lr * grad_p).astype(np.float32)
    user[USER_BIAS] = (bu - user_lr * grad_bu).astype(np.float32)
    return float((err**2).mean()) if len(items) else 0.0


def central_epoch(
    users: list[dict[str, np.ndarray]],
    q: FloatArray,
    b: FloatArray,
    data: list[tuple[IntArray, FloatArray]],
    *,
    lr: float,
    user_lr: float,
    reg: float,
) -> None:
    """One epoch of the same steps on the pooled ratings: every user steps from the same ``q, b``
    and the item changes are summed (centralised full-batch training)."""
    dq = np.zeros_like(q)
    db = np.zeros_like(b)
    for user, (items, ratings) in zip(users, data, strict=True):
        lq, lb = q.copy(), b.copy()
        local_epoch(user, lq, lb, items, ratings, lr=lr, user_lr=user_lr, reg=reg)
        dq[items] += lq[items] - q[items]
        db[items] += lb[items] - b[items]
    q += dq
    b += db


@dataclass
class FCFClient:
    """One user's client. ``config`` keys: ``epochs`` (local epochs), ``lr``, ``user_lr``, ``reg``,
    ``rank`` and ``seed`` (for the first user factor); all have defaults here."""

    user: int
    items_train: IntArray
    ratings_train: FloatArray
    items_test: IntArray
    ratings_test: FloatArray
    epochs: int = 1
    lr: float = 0.01
    user_lr: float = 0.1
    reg: float = 0.05
    seed: int = 0

    def _user(self, rank: int, context: ClientContext) -> dict[str, np.ndarray]:
        if USER_FACTOR in context.state:
            return {USER_FACTOR: context.state[USER_FACTOR], USER_BIAS: context.state[USER_BIAS]}
        return init_user(rank, self.seed, self.user, self.ratings_train)

    def fit(self, params: Params, config: Mapping[str, Any], context: ClientContext) -> FitResult:
        q0, b0 = params[ITEM_FACTORS], params[ITEM_BIAS]
        q, b = q0.astype(np.float32, copy=True), b0.astype(np.float32, copy=True)
        user = self._user(q.shape[1], context)
        loss = 0.0
        for _ in range(int(config.get("epochs", self.epochs))):
            loss = local_epoch(
                user, q, b, self.items_train, self.ratings_train,
                lr=float(config.get("lr", self.lr)),
                user_lr=float(config.get("user_lr", self.user_lr)),
                reg=float(config.get("reg", self.reg)),
            )  # fmt: skip
        context.state.update(user)  # the user's parameters stay here
        return FitResult(
            update={ITEM_FACTORS: q - q0, ITEM_BIAS: b - b0},
            num_examples=len(self.ratings_train),
            metrics={"loss": loss},
        )

    def evaluate(
        self, params: Params, config: Mapping[str, Any], context: ClientContext
    ) -> EvalResult:
        q, b = params[ITEM_FACTORS], params[ITEM_BIAS]
        user = self._user(q.shape[1], context)
        err = self.ratings_test - predict(user, q, b, self.items_test)
        n = len(err)
        sse = float((err**2).sum())
        mse = sse / n if n else 0.0
        metrics = {"sse": sse, "rmse": mse**0.5, "mae": float(np.abs(err).mean()) if n else 0.0}
        if n:
            scores = predict(user, q, b, np.arange(len(b)))
            metrics.update(ranking_metrics(scores, self.items_train, self.items_test, TOP_K))
        return EvalResult(loss=mse, num_examples=n, metrics=metrics)


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
