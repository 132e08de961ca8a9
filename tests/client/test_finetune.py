"""Local fine-tuning before federated evaluation (``eval.finetune_epochs``), hand-computed."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.client.base import ClientContext
from fedloom.config import validate_config
from fedloom.strategies.factory import make_strategy
from tests.strategies.test_fedavg_fedsgd import _context
from tests.strategies.test_fedprox import one_weight_client

ONE = {"weight": np.ones((1, 1), np.float32)}


def test_the_client_trains_before_it_is_scored_and_keeps_nothing() -> None:
    # the loss is w^2 (gradient 2w), one example, batch 1, lr 0.1
    client = one_weight_client()
    config = {"round": 1, "seed": 0, "lr": 0.1, "batch_size": 1, "finetune_epochs": 2}
    context = ClientContext()

    tuned = client.evaluate(ONE, config, context)
    plain = client.evaluate(ONE, {"round": 1}, context)

    # w: 1 -> 0.8 -> 0.64; scored on the same example: 0.64^2
    assert tuned.loss == pytest.approx(0.64**2, rel=1e-6)
    assert plain.loss == pytest.approx(1.0)  # the fine-tuned model was dropped
    assert context.state == {}


def test_eval_finetune_epochs_reaches_every_evaluation_task_with_the_training_settings() -> None:
    cfg = validate_config({"eval": {"finetune_epochs": 3}, "client": {"lr": 0.05}})

    [task] = make_strategy(cfg).configure_evaluate(_context(1, [0], seed=3))

    assert task.config["finetune_epochs"] == 3 and task.config["lr"] == 0.05
    [plain] = make_strategy(validate_config({})).configure_evaluate(_context(1, [0], seed=3))
    assert "finetune_epochs" not in plain.config
