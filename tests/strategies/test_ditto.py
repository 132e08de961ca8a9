"""Ditto: FedAvg's update of the global model plus a personal model pulled towards it,
hand-computed on a one-weight model."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.client.base import ClientContext
from fedloom.config import validate_config
from fedloom.core.codec import Float32Codec
from fedloom.core.params import ParamSpec
from fedloom.core.task import EVALUATE, FIT, MODEL, Blob, Task, Upload, blob_table
from fedloom.engines import SequentialEngine
from fedloom.errors import ConfigError
from fedloom.strategies import Ditto
from fedloom.strategies.ditto import PERSONAL
from fedloom.strategies.factory import make_strategy
from tests.strategies.test_fedprox import one_weight_client

ONE = {"weight": np.ones((1, 1), np.float32)}
CONFIG = {"epochs": 1, "batch_size": 1, "lr": 0.1, "round": 1}
LOCAL = {"local": {"name": "ditto", "lambda": 1.0}}


def test_the_global_update_is_fedavgs_and_the_personal_model_steps_towards_the_global() -> None:
    # the loss is w^2 (gradient 2w); the personal model starts at its own v = 3
    context = ClientContext(state={PERSONAL: np.array([3.0], np.float32)})

    fit = one_weight_client().fit(ONE, {**CONFIG, **LOCAL}, context)

    # global pass: w = 1 - 0.1 * 2 = 0.8, upload -0.2
    np.testing.assert_allclose(np.asarray(fit.update), [-0.2], rtol=1e-6)
    # personal pass: v = 3 - 0.1 * (2 * 3 + 1 * (3 - 1)) = 2.2
    np.testing.assert_allclose(context.state[PERSONAL], [2.2], rtol=1e-6)
    assert fit.metrics["train_loss"] == pytest.approx(1.0)
    assert fit.metrics["personal_train_loss"] == pytest.approx(9.0)


def test_a_new_personal_model_starts_at_the_global_model() -> None:
    context = ClientContext()

    one_weight_client().fit(ONE, {**CONFIG, **LOCAL}, context)

    # v = 1 - 0.1 * (2 * 1 + 1 * (1 - 1)) = 0.8
    np.testing.assert_allclose(context.state[PERSONAL], [0.8], rtol=1e-6)


def test_lambda_zero_is_local_training_and_a_large_lambda_stays_at_the_global_model() -> None:
    free, tied = (
        ClientContext(state={PERSONAL: np.array([3.0], np.float32)}),
        ClientContext(state={PERSONAL: np.array([3.0], np.float32)}),
    )

    one_weight_client().fit(ONE, {**CONFIG, "local": {"name": "ditto", "lambda": 0.0}}, free)
    one_weight_client().fit(ONE, {**CONFIG, "local": {"name": "ditto", "lambda": 10.0}}, tied)

    np.testing.assert_allclose(free.state[PERSONAL], [3.0 - 0.1 * 6.0], rtol=1e-6)  # 2.4
    np.testing.assert_allclose(tied.state[PERSONAL], [3.0 - 0.1 * (6.0 + 20.0)], rtol=1e-6)


def test_federated_evaluation_after_a_round_scores_the_personal_model_it_trained() -> None:
    # Through an engine: the evaluation of round 1 reads the state round 1's fit left.
    spec = ParamSpec.of(ONE)
    model = Blob.encode(spec, Float32Codec(), spec.flatten(ONE))
    engine = SequentialEngine(lambda cid: one_weight_client())
    fit = Task(FIT, 1, 0, {**CONFIG, **LOCAL}, {MODEL: model.digest}, Upload("float32", 1))
    evaluate = Task(EVALUATE, 1, 0, {"round": 1, **LOCAL}, {MODEL: model.digest})

    list(engine.run([fit], blob_table(model)))
    [result] = list(engine.run([evaluate], blob_table(model)))

    # v = 0.8 after round 1: the loss (v x - y)^2 = 0.64, not the global model's 1
    assert result.metrics["loss"] == pytest.approx(0.64, rel=1e-6)


def test_the_config_key_is_lambda() -> None:
    cfg = validate_config({"strategy": {"name": "ditto", "lambda": 0.5}})

    strategy = make_strategy(cfg)

    assert isinstance(strategy, Ditto) and strategy.ditto_lambda == 0.5
    assert validate_config({"strategy": {"ditto_lambda": 0.25}}).strategy.ditto_lambda == 0.25
    with pytest.raises(ConfigError, match=r"strategy\.lambda: got -1"):
        validate_config({"strategy": {"name": "ditto", "lambda": -1}})
    with pytest.raises(ConfigError, match=r"strategy\.lambda must be a finite number >= 0"):
        Ditto(ditto_lambda=float("nan"))


def test_the_server_averages_like_fedavg_and_sends_lambda_to_fit_and_evaluation() -> None:
    from tests.strategies.test_fedavg_fedsgd import _context, _one_round

    strategy = Ditto(ditto_lambda=0.25)
    ctx = _context(2, [0], seed=3)

    assert strategy.configure_fit(ctx)[0].config["local"] == {"name": "ditto", "lambda": 0.25}
    assert strategy.configure_evaluate(ctx)[0].config["local"] == {"name": "ditto", "lambda": 0.25}
    # the fixed clients keep no personal model: the server side is FedAvg's weighted mean
    np.testing.assert_allclose(_one_round(Ditto(ditto_lambda=0.25)), [1.5, 5.0])
