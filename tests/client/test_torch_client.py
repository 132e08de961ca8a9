"""TorchClient on a one-weight linear regression, where every number can be worked by hand."""

from typing import Literal

import numpy as np
import pytest
import torch

from fedloom.client.base import ClientContext
from fedloom.client.local import LocalTraining, client_seed
from fedloom.client.torch_client import TorchClient, get_params
from fedloom.core.task import MASK
from fedloom.models import LinearModel

X = np.array([[1.0], [2.0]], np.float32)
Y = np.array([2.0, 2.0], np.float32)


def _client(**kw: object) -> TorchClient:
    return TorchClient(LinearModel(1, 1), X, Y, task="regression", num_classes=1, **kw)  # type: ignore[arg-type]


def _theta() -> dict[str, np.ndarray]:
    return {
        "linear.weight": np.array([[1.0]], np.float32),
        "linear.bias": np.array([0.0], np.float32),
    }


def test_gradient_mode_returns_the_full_batch_gradient() -> None:
    # L = mean((w x + b - y)^2) at w=1, b=0: residuals [-1, 0] -> dL/dw = -1, dL/db = -1, L = 0.5
    res = _client().fit(_theta(), {"mode": "gradient", "batch_size": 1})
    assert isinstance(res.update, np.ndarray)
    np.testing.assert_allclose(res.update, [-1.0, -1.0], rtol=1e-6)
    assert res.metrics["train_loss"] == pytest.approx(0.5)
    assert res.num_examples == 2


def test_train_mode_returns_the_delta_of_one_sgd_step() -> None:
    # one full-batch step with lr 0.1: w = 1 + 0.1, b = 0 + 0.1
    client = _client(training=LocalTraining(epochs=1, batch_size=2, lr=0.1))
    res = client.fit(_theta(), {"mode": "train"})
    assert isinstance(res.update, np.ndarray)
    np.testing.assert_allclose(res.update, [0.1, 0.1], rtol=1e-6)


def test_config_overrides_local_training() -> None:
    client = _client(training=LocalTraining(epochs=1, batch_size=2, lr=0.1))
    res = client.fit(_theta(), {"mode": "train", "lr": 0.2})
    assert isinstance(res.update, np.ndarray)
    np.testing.assert_allclose(res.update, [0.2, 0.2], rtol=1e-6)


def test_evaluate_reports_loss_and_regression_metrics() -> None:
    ev = _client().evaluate(_theta(), {})
    assert ev.loss == pytest.approx(0.5)
    assert ev.metrics["mae"] == pytest.approx(0.5)
    assert ev.num_examples == 2


def test_training_is_deterministic_per_client_and_round() -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = LinearModel(4, 2)
    theta = get_params(model)
    client = TorchClient(model, x, y, num_classes=2, client_id=3, seed=1)
    a = client.fit(theta, {"round": 2, "batch_size": 4})
    b = client.fit(theta, {"round": 2, "batch_size": 4})
    c = client.fit(theta, {"round": 3, "batch_size": 4})
    assert isinstance(a.update, np.ndarray)
    assert isinstance(b.update, np.ndarray)
    assert isinstance(c.update, np.ndarray)
    np.testing.assert_array_equal(a.update, b.update)
    assert not np.array_equal(a.update, c.update)
    assert client_seed(0, 1, 2) != client_seed(0, 2, 1)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_pruned_weight_stays_zero_under_momentum_weight_decay_and_adam(
    optimizer: Literal["sgd", "adam"],
) -> None:
    # the mask prunes the weight and keeps the bias: only the bias trains
    training = LocalTraining(
        epochs=3, batch_size=1, lr=0.1, optimizer=optimizer, momentum=0.9 * (optimizer == "sgd")
    )
    client = _client(training=LocalTraining(**{**vars(training), "weight_decay": 0.1}))
    theta = {"linear.weight": np.array([[0.0]], np.float32), "linear.bias": np.zeros(1, np.float32)}
    mask = np.array([0.0, 1.0], np.float32)

    res = client.fit(theta, {"mode": "train"}, ClientContext(blobs={MASK: mask}))

    assert isinstance(res.update, np.ndarray)
    assert res.update[0] == 0.0 and res.update[1] > 0.1
