"""Federated collaborative filtering: the user factor stays in the client's state, only item
parameters are uploaded, and full participation with one epoch equals pooled training."""

from __future__ import annotations

import numpy as np

from fedloom.client.fcf import (
    ITEM_BIAS,
    ITEM_FACTORS,
    USER_BIAS,
    USER_FACTOR,
    FCFClient,
    central_epoch,
    init_item_params,
    init_user,
    local_epoch,
)
from fedloom.core.codec import Float32Codec
from fedloom.core.params import ParamSpec
from fedloom.core.task import EVALUATE, FIT, MODEL, Blob, Task, Upload, blob_table
from fedloom.engines import SequentialEngine


def _client(user: int) -> FCFClient:
    items = np.array([0, 2], dtype=np.int64) + user
    return FCFClient(
        user, items, np.array([4.0, 2.0], np.float32),
        np.array([1], dtype=np.int64), np.array([3.0], np.float32),
    )  # fmt: skip


def test_one_local_epoch_by_hand() -> None:
    user = {USER_FACTOR: np.array([1.0, 0.0], np.float32), USER_BIAS: np.array([3.0], np.float32)}
    q = np.array([[1.0, 1.0], [5.0, 5.0], [0.0, 2.0]], np.float32)
    b = np.array([0.5, 9.0, 0.0], np.float32)

    mse = local_epoch(
        user, q, b, np.array([0, 2]), np.array([4.0, 2.0], np.float32), lr=0.1, user_lr=0.5, reg=0.0
    )

    # predictions 3 + 0.5 + 1 = 4.5 and 3 + 0 + 0 = 3: errors -0.5 and -1
    assert mse == 0.625
    # q_i += lr * e * p; b_i += lr * e; item 1 (not rated) is untouched
    np.testing.assert_allclose(q, [[0.95, 1.0], [5.0, 5.0], [-0.1, 2.0]])
    np.testing.assert_allclose(b, [0.45, 9.0, -0.1])
    # p -= user_lr * -(e . q_items) / n = 0.5 * (-0.5 * [1, 1] - 1 * [0, 2]) / 2
    np.testing.assert_allclose(user[USER_FACTOR], [0.875, -0.625])
    np.testing.assert_allclose(user[USER_BIAS], [3.0 - 0.5 * 0.75])


def test_the_upload_holds_only_item_parameters_and_the_user_factor_stays_in_the_engine_state() -> (
    None
):
    num_items, rank = 4, 3
    params = init_item_params(num_items, rank, seed=0)
    spec = ParamSpec.of(params)
    model = Blob.encode(spec, Float32Codec(), spec.flatten(params))
    engine = SequentialEngine(_client)
    blobs = {MODEL: model.digest}

    results = list(
        engine.run([Task(FIT, 1, 1, {}, blobs, Upload("float32", spec.size))], blob_table(model))
    )

    (result,) = results
    assert result.ok and result.payload is not None
    assert spec.size == num_items * rank + num_items == 16
    assert len(result.payload) == 4 * spec.size  # float32 item factors and biases, nothing else
    delta = spec.unflatten(np.frombuffer(result.payload, np.float32).copy())
    assert set(delta) == {ITEM_FACTORS, ITEM_BIAS}
    # user 1 rated items 1 and 3: only their rows moved
    assert np.flatnonzero(np.abs(delta[ITEM_FACTORS]).sum(axis=1)).tolist() == [1, 3]
    state = engine.states.get(1, 2)
    assert set(state) == {USER_FACTOR, USER_BIAS}
    first = init_user(rank, 0, 1, np.array([4.0, 2.0], np.float32))
    assert not np.allclose(state[USER_FACTOR], first[USER_FACTOR])  # trained, and kept here
    # the next round's evaluation starts from the kept factor
    ev = list(engine.run([Task(EVALUATE, 2, 1, {}, blobs)], blob_table(model)))
    assert ev[0].ok and ev[0].payload is None and ev[0].metrics["rmse"] >= 0.0


def test_full_participation_with_one_epoch_is_pooled_full_batch_training() -> None:
    params = init_item_params(5, 2, seed=1)
    clients = [_client(u) for u in range(3)]
    users = [init_user(2, 0, u, c.ratings_train) for u, c in enumerate(clients)]
    q, b = params[ITEM_FACTORS].copy(), params[ITEM_BIAS].copy()
    central_epoch(
        users, q, b, [(c.items_train, c.ratings_train) for c in clients],
        lr=0.05, user_lr=0.1, reg=0.01,
    )  # fmt: skip

    from fedloom.client.base import ClientContext

    fits = [c.fit(params, {"lr": 0.05, "reg": 0.01}, ClientContext()) for c in clients]
    summed = {k: params[k] + sum(f.update[k] for f in fits) for k in params}

    np.testing.assert_allclose(summed[ITEM_FACTORS], q, atol=1e-6)
    np.testing.assert_allclose(summed[ITEM_BIAS], b, atol=1e-6)


def test_ranking_metrics_by_hand() -> None:
    from fedloom.client.fcf import ranking_metrics

    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0], np.float32)
    # item 0 was rated in training: the ranking is 1, 2, 3, 4, 5; top 2 = items 1 and 2
    out = ranking_metrics(scores, np.array([0]), np.array([2, 5]), k=2)

    assert out["hit_rate_at_2"] == 0.5  # item 2 of the two held-out items is in the top 2
    # item 2 is at rank 2: (1 / log2 3) / (1 / log2 2 + 1 / log2 3)
    expected = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert abs(out["ndcg_at_2"] - expected) < 1e-12
