"""Federated collaborative filtering: the user factor stays in the client's state, only the item
rows a user rated are uploaded, and full participation with one epoch is pooled training."""

from __future__ import annotations

import math

import numpy as np

from fedloom.client.base import ClientContext
from fedloom.client.fcf import (
    ITEM_BIAS,
    ITEM_FACTORS,
    USER_BIAS,
    USER_FACTOR,
    FCFClient,
    UserRatings,
    init_item_params,
    ranking_metrics,
    row_mean_epoch,
    user_step,
)
from fedloom.core.codec import Float32Codec
from fedloom.core.params import ParamSpec
from fedloom.core.task import FIT, MODEL, Blob, RowSparse, Task, Upload, blob_table
from fedloom.engines import SequentialEngine
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies.fcf import FederatedCF


def _user(u: int) -> UserRatings:
    """User ``u`` rates items ``u`` and ``u + 2`` (4 and 2), and holds out item ``u + 1`` (3)."""
    return UserRatings(
        u, np.array([u, u + 2], np.int64), np.array([4.0, 2.0], np.float32),
        np.array([u + 1], np.int64), np.array([3.0], np.float32),
    )  # fmt: skip


def _vec(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def test_one_user_step_by_hand() -> None:
    user = {USER_FACTOR: _vec(1.0, 0.0), USER_BIAS: _vec(3.0)}
    q = np.array([[1.0, 1.0], [5.0, 5.0], [0.0, 2.0]], np.float32)
    b = _vec(0.5, 9.0, 0.0)

    new, dq, db, mse = user_step(user, q, b, np.array([0, 2]), _vec(4.0, 2.0), lr=0.1, reg=0.0)

    # predictions 3 + 0.5 + 1 = 4.5 and 3 + 0 + 0 = 3: errors -0.5 and -1
    assert mse == 0.625
    # rows 0 and 2 move by lr * e * p and lr * e
    np.testing.assert_allclose(dq, [[-0.05, 0.0], [-0.1, 0.0]])
    np.testing.assert_allclose(db, [-0.05, -0.1])
    # p -= lr * -(e . q_items) / n = 0.1 * (-0.5 * [1, 1] - 1 * [0, 2]) / 2; b_u += lr * mean(e)
    np.testing.assert_allclose(new[USER_FACTOR], [0.975, -0.125])
    np.testing.assert_allclose(new[USER_BIAS], [2.925])


def test_an_epoch_moves_each_item_row_by_the_mean_over_its_raters() -> None:
    users = [
        {USER_FACTOR: _vec(1.0), USER_BIAS: _vec(0.0)},
        {USER_FACTOR: _vec(2.0), USER_BIAS: _vec(0.0)},
    ]
    q, b = np.zeros((3, 1), np.float32), np.zeros(3, np.float32)
    data = [(np.array([0, 1]), _vec(1.0, 2.0)), (np.array([0]), _vec(3.0))]

    mse = row_mean_epoch(users, q, b, data, lr=0.5, reg=0.0)

    assert mse == (1 + 4 + 9) / 3
    # item 0: user 0 moves it by 0.5 * 1 * 1, user 1 by 0.5 * 3 * 2: mean 1.75; item 1 by user 0
    # only (0.5 * 2 * 1); item 2, rated by nobody, stays
    np.testing.assert_allclose(q[:, 0], [1.75, 1.0, 0.0])
    np.testing.assert_allclose(b, [(0.5 + 1.5) / 2, 1.0, 0.0])
    np.testing.assert_allclose([u[USER_BIAS][0] for u in users], [0.75, 1.5])


def test_the_upload_holds_only_the_rated_item_rows_and_the_user_factor_stays_in_the_engine() -> (
    None
):
    num_items, rank = 4, 3
    params = init_item_params(num_items, rank, seed=0)
    spec = ParamSpec.of(params)
    model = Blob.encode(spec, Float32Codec(), spec.flatten(params))
    engine = SequentialEngine(lambda cid: FCFClient([_user(cid)]))
    rows = RowSparse.of(spec)
    task = Task(FIT, 1, 1, {}, {MODEL: model.digest}, Upload("float32", rows.size, rows=rows))

    (result,) = engine.run([task], blob_table(model))

    assert result.ok and result.payload is not None
    # user 1 rated items 1 and 3: a 1-byte bitmask, then 2 rows x (3 factors + 1 bias) float32.
    # Nothing else: the user factor (3 values) and bias (1) would take 16 more bytes.
    assert len(result.payload) == 1 + 2 * (rank + 1) * 4 == 33
    assert result.payload[0] == 0b1010
    fit = FCFClient([_user(1)]).fit(params, {}, ClientContext())
    assert isinstance(fit.update, dict)
    sent = np.frombuffer(result.payload[1:], "<f4")
    expected = [*fit.update[ITEM_FACTORS][[1, 3]].ravel(), *fit.update[ITEM_BIAS][[1, 3]]]
    np.testing.assert_array_equal(sent, expected)
    state = engine.states.get(1, 2)
    assert {k: v.shape for k, v in state.items()} == {USER_FACTOR: (1, rank), USER_BIAS: (1,)}
    assert not np.isin(state[USER_FACTOR], sent).any()


def test_full_participation_with_one_epoch_is_centralised_full_batch_training() -> None:
    params = init_item_params(5, 2, seed=1)
    spec = ParamSpec.of(params)
    config = {"epochs": 1, "lr": 0.3, "reg": 0.01}
    coordinator = Coordinator(
        strategy=FederatedCF(client_config=config),
        engine=SequentialEngine(lambda cid: FCFClient([_user(cid)])),
        spec=spec,
        params=spec.flatten(params),
        population=Population({0: 2, 1: 2, 2: 2}),
    )
    history = coordinator.run(2)

    everyone = FCFClient([_user(u) for u in range(3)])
    context, central = ClientContext(), dict(params)
    for _ in range(2):
        update = everyone.fit(central, config, context).update
        assert isinstance(update, dict)
        central = {k: central[k] + update[k] for k in central}
    np.testing.assert_allclose(coordinator.params, spec.flatten(central), atol=1e-6)
    # every client sends its 2 rows of 3 values after a 1-byte bitmask
    assert [r["bytes_up"] for r in history] == [3 * (1 + 2 * 3 * 4)] * 2


def test_evaluation_pools_the_held_out_ratings_of_its_users() -> None:
    params = {ITEM_FACTORS: np.zeros((3, 1), np.float32), ITEM_BIAS: np.zeros(3, np.float32)}
    users = [
        UserRatings(0, np.array([2]), _vec(3.0), np.array([0]), _vec(4.0)),
        UserRatings(1, np.array([2]), _vec(4.0), np.array([0, 1]), _vec(2.0, 2.0)),
    ]
    state = {USER_FACTOR: np.zeros((2, 1), np.float32), USER_BIAS: _vec(3.0, 4.0)}

    ev = FCFClient(users).evaluate(params, {}, ClientContext(state=state))

    # errors 1 (user 0) and -2, -2 (user 1): MSE 9 / 3 over the three held-out ratings
    assert ev.num_examples == 3 and ev.loss == 3.0
    assert ev.metrics["rmse"] == math.sqrt(3.0)
    assert abs(ev.metrics["mae"] - 5 / 3) < 1e-12
    # each user's held-out items are the top of the two items it did not rate in training
    assert ev.metrics["hit_rate_at_10"] == 1.0


def test_ranking_metrics_by_hand() -> None:
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0], np.float32)
    # item 0 was rated in training: the ranking is 1, 2, 3, 4, 5; top 2 = items 1 and 2
    out = ranking_metrics(scores, np.array([0]), np.array([2, 5]), k=2)

    assert out["hit_rate_at_2"] == 0.5  # item 2 of the two held-out items is in the top 2
    # item 2 is at rank 2: (1 / log2 3) / (1 / log2 2 + 1 / log2 3)
    expected = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert abs(out["ndcg_at_2"] - expected) < 1e-12


def test_a_user_with_a_single_rating_trains_and_has_nothing_to_evaluate() -> None:
    params = init_item_params(3, 2, seed=0)
    single = UserRatings(0, np.array([1]), _vec(4.0), np.array([], np.int64), _vec())
    client = FCFClient([single], lr=0.4)
    context = ClientContext()

    fit = client.fit(params, {}, context)
    ev = client.evaluate(params, {}, context)

    assert fit.num_examples == 1 and fit.rows is not None
    assert fit.rows.tolist() == [False, True, False]
    assert (ev.num_examples, ev.loss, ev.metrics) == (0, 0.0, {})
