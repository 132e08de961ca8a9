"""The client state store: versions by round, so a re-run round starts from the same state."""

from __future__ import annotations

import numpy as np

from fedloom.client.state import ClientStateStore


def test_a_task_starts_from_the_newest_state_written_before_its_round() -> None:
    store = ClientStateStore(keep_previous=True)
    store.put(7, 1, {"c": np.array([1.0])})
    store.put(7, 3, {"c": np.array([3.0])})

    assert store.get(7, 1) == {}
    assert store.get(7, 2)["c"].tolist() == [1.0]
    assert store.get(7, 4)["c"].tolist() == [3.0]
    assert store.get(8, 4) == {}
    assert 7 in store and len(store) == 1


def test_a_simulation_keeps_one_version_and_a_deployment_client_the_one_before() -> None:
    sim, deploy = ClientStateStore(), ClientStateStore(keep_previous=True)
    for store in (sim, deploy):
        store.put(0, 1, {"c": np.array([1.0])})
        store.put(0, 2, {"c": np.array([2.0])})

    # round 2 runs again (the server crashed after clients had trained it)
    assert deploy.get(0, 2)["c"].tolist() == [1.0]
    assert sim.get(0, 2) == {}
    assert sim.nbytes == 8 and deploy.nbytes == 16


def test_a_rerun_round_replaces_its_own_version_and_anything_later() -> None:
    store = ClientStateStore(keep_previous=True)
    store.put(0, 1, {"c": np.array([1.0])})
    store.put(0, 2, {"c": np.array([2.0])})

    store.put(0, 2, {"c": np.array([20.0])})

    assert store.get(0, 3)["c"].tolist() == [20.0]
    assert store.get(0, 2)["c"].tolist() == [1.0]


def test_state_handed_out_is_a_copy() -> None:
    store = ClientStateStore()
    store.put(0, 1, {"c": np.array([1.0])})

    store.get(0, 2)["c"][0] = 99.0

    assert store.get(0, 2)["c"].tolist() == [1.0]


def test_an_evaluation_after_a_fit_in_the_same_round_keeps_the_state_the_fit_left() -> None:
    from collections.abc import Mapping
    from typing import Any

    from fedloom.client.base import ClientContext, EvalResult, FitResult
    from fedloom.core.codec import Float32Codec
    from fedloom.core.params import Params, ParamSpec
    from fedloom.core.task import EVALUATE, FIT, MODEL, Blob, Task, Upload, blob_table
    from fedloom.engines import SequentialEngine

    class Counting:
        def fit(
            self, params: Params, config: Mapping[str, Any], context: ClientContext
        ) -> FitResult:
            context.state["fits"] = context.state.get("fits", np.zeros(1)) + 1
            return FitResult(update=np.zeros(1, np.float32), num_examples=1)

        def evaluate(
            self, params: Params, config: Mapping[str, Any], context: ClientContext
        ) -> EvalResult:
            return EvalResult(loss=0.0, num_examples=1)

    spec = ParamSpec(("w",), ((1,),), ("<f4",))
    model = Blob.encode(spec, Float32Codec(), np.zeros(1, np.float32))
    engine = SequentialEngine(lambda cid: Counting())
    blobs = {MODEL: model.digest}
    for r in (1, 2):
        fit = Task(FIT, r, 0, {}, blobs, Upload("float32", 1))
        list(engine.run([fit, Task(EVALUATE, r, 0, {}, blobs)], blob_table(model)))

    assert engine.states.get(0, 3)["fits"].tolist() == [2.0]
