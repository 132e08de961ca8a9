"""Simulated attacks: who is malicious, what each kind does to data and updates, and a run that
records them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.attacks import PoisonedEngine, malicious_clients, poison_data, stamp_trigger
from fedloom.attacks.model_poisoning import poison_update
from fedloom.client.base import EvalResult, FitResult
from fedloom.config import load_config
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import EVALUATE, FIT, MODEL, Blob, Task, Upload, blob_table
from fedloom.data.federated import LocalArrays
from fedloom.engines import SequentialEngine
from fedloom.simulation import run

SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))


def test_the_malicious_clients_are_a_seeded_fixed_fraction() -> None:
    first = malicious_clients(10, 0.3, seed=5)
    assert first == malicious_clients(10, 0.3, seed=5) == sorted(first)
    assert len(first) == 3 and len(set(first)) == 3
    assert malicious_clients(10, 0.0, seed=5) == []
    assert len(malicious_clients(7, 0.2, seed=1)) == 1  # round(1.4)


def test_each_update_attack() -> None:
    delta = np.array([1.0, -2.0], np.float32)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(poison_update(delta, "sign_flip", 10.0, rng), [-10.0, 20.0])
    np.testing.assert_array_equal(poison_update(delta, "scale", 3.0, rng), [3.0, -6.0])
    np.testing.assert_array_equal(poison_update(delta, "backdoor", 3.0, rng), [3.0, -6.0])
    np.testing.assert_array_equal(poison_update(delta, "label_flip", 3.0, rng), delta)
    noise = poison_update(np.zeros(100_000, np.float32), "gaussian", 2.0, rng)
    assert abs(float(noise.std()) - 2.0) < 0.02


def test_label_flip_and_backdoor_poison_the_training_data() -> None:
    local = LocalArrays(
        np.zeros((4, 6), np.float32), np.array([0, 1, 2, 9]), np.ones((1, 6)), np.array([3])
    )
    flipped = poison_data(local, "label_flip", 10, 1.0, seed=0)
    np.testing.assert_array_equal(flipped.y_train, [9, 8, 7, 0])
    assert flipped.y_test is not None and flipped.y_test.tolist() == [3]  # test split untouched

    backdoored = poison_data(local, "backdoor", 10, 16.0, seed=0)
    stamped = backdoored.x_train.sum(axis=1) == 4 * 16.0  # trigger: the last 4 values = 16
    assert stamped.sum() == 2  # half of the examples
    np.testing.assert_array_equal(backdoored.y_train[stamped], [0, 0])
    np.testing.assert_array_equal(backdoored.x_train[~stamped], 0.0)
    np.testing.assert_array_equal(
        stamp_trigger(np.zeros((1, 2, 3)), 5.0).reshape(-1), [0, 0, 5, 5, 5, 5]
    )


class Honest:
    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        return FitResult(update=np.array([1.0, 2.0], np.float32), num_examples=1)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.5, num_examples=1)


def test_the_poisoned_engine_changes_only_the_fit_uploads_of_malicious_clients() -> None:
    codec = Float32Codec()
    model = Blob.encode(SPEC, codec, np.zeros(2, np.float32))
    engine = PoisonedEngine(SequentialEngine(lambda cid: Honest()), [1], "sign_flip", 2.0, seed=0)
    tasks = [
        Task(FIT, 1, cid, {}, {MODEL: model.digest}, Upload("float32", 2)) for cid in (0, 1)
    ] + [Task(EVALUATE, 1, 1, {}, {MODEL: model.digest})]

    results = list(engine.run(tasks, blob_table(model)))

    updates = [codec.decode(r.payload, 2) for r in results[:2] if r.payload is not None]
    np.testing.assert_array_equal(updates, [[1.0, 2.0], [-2.0, -4.0]])
    assert results[2].ok and results[2].metrics["loss"] == 0.5


def test_a_simulated_attack_is_recorded_in_the_summary(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "rounds=1",
            "partition.num_clients=5",
            "client.epochs=1",
            "model.hidden=[8]",
            "engine.name=sequential",
            "attack.kind=backdoor",
            "attack.fraction=0.4",
        ],
    )
    run(cfg, tmp_path, quiet=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["attack"] == {
        "kind": "backdoor",
        "fraction": 0.4,
        "scale": 10.0,
        "malicious": malicious_clients(5, 0.4, seed=0),
    }
    assert 0.0 <= summary["final"]["backdoor_success"] <= 1.0
