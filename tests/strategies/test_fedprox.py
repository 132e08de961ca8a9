"""FedProx: the client's proximal step and the server side, against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.client.torch_client import TorchClient
from fedloom.errors import ConfigError
from fedloom.strategies import FedProx


def one_weight_client() -> TorchClient:
    """y = w * x with w = 1, one example (x=1, y=0): the loss is w^2, its gradient 2w."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    x, y = np.ones((1, 1), np.float32), np.zeros(1, np.float32)
    return TorchClient(model, x, y, task="regression", num_classes=1)


CONFIG = {"epochs": 2, "batch_size": 1, "lr": 0.1, "round": 1}


def test_the_proximal_term_pulls_each_local_step_towards_the_global_model() -> None:
    # Prepare: mu = 1, so each step follows 2w + (w - w_global)
    client = one_weight_client()
    local = {"local": {"name": "fedprox", "proximal_mu": 1.0}}

    # Execute
    prox = client.fit({"weight": np.ones((1, 1), np.float32)}, {**CONFIG, **local})
    plain = client.fit({"weight": np.ones((1, 1), np.float32)}, CONFIG)

    # Assert: step 1: w = 1 - 0.1 * (2 + 0) = 0.8; step 2: w = 0.8 - 0.1 * (1.6 - 0.2) = 0.66
    np.testing.assert_allclose(np.asarray(prox.update), np.array([-0.34]), rtol=1e-6)
    # without the term: 1 -> 0.8 -> 0.64
    np.testing.assert_allclose(np.asarray(plain.update), np.array([-0.36]), rtol=1e-6)
    # the train loss reported is the data loss alone: (1 + 0.64) / 2 and (1 + 0.64) / 2
    assert prox.metrics["train_loss"] == pytest.approx((1.0 + 0.8**2) / 2)


def test_fedprox_sends_mu_to_clients_and_averages_like_fedavg() -> None:
    from tests.strategies.test_fedavg_fedsgd import _context, _one_round

    task = FedProx(proximal_mu=0.25).configure_fit(_context(2, [0], seed=3))[0]

    assert task.config["local"] == {"name": "fedprox", "proximal_mu": 0.25}
    # the fixed clients ignore the hook: the server side is FedAvg's weighted mean
    np.testing.assert_allclose(_one_round(FedProx(proximal_mu=0.25)), [1.5, 5.0])


def test_a_negative_mu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="proximal_mu must be >= 0, got -1"):
        FedProx(proximal_mu=-1)
