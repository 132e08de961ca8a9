"""A round of two dependent exchanges (tests/strategies/two_stage.py) in simulation, on every
in-process engine: stage 2's clip bound comes from stage 1's results."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedloom.config import load_config
from fedloom.core.task import FIT, Result
from fedloom.engines import SequentialEngine
from fedloom.engines.base import OverSelects
from fedloom.server.coordinator import Coordinator
from fedloom.simulation import Simulation
from tests.engines.conformance import ENGINE_FACTORIES, engine_params
from tests.strategies.two_stage import UPDATE_NORM, ClipToMedianNorm


class Recorder:
    def __init__(self) -> None:
        self.results: list[Result] = []

    def on_round_start(self, round_num: int, num_clients: int) -> None:
        pass

    def on_result(self, result: Result) -> None:
        self.results.append(result)

    def on_round_end(self, record: dict[str, Any]) -> None:
        pass


def _run(engine: str) -> tuple[Coordinator, Recorder]:
    cfg = load_config(None, ["partition.num_clients=6", "seed=3"])
    sim = Simulation(cfg)
    recorder = Recorder()
    coord = Coordinator(
        strategy=ClipToMedianNorm(client_config={"epochs": 1, "lr": 0.2, "batch_size": 10}),
        engine=ENGINE_FACTORIES[engine](sim.client),
        spec=sim.spec,
        params=sim.init_params.copy(),
        population=sim.population(),
        seed=3,
        listeners=[recorder],
    )
    try:
        coord.run_round(1, evaluate=False)
        coord.run_round(2, evaluate=False)
    finally:
        coord.engine.close()
    return coord, recorder


@pytest.mark.parametrize("engine", engine_params())
def test_stage_two_clips_to_the_median_norm_stage_one_reported(engine: str) -> None:
    coord, recorder = _run(engine)

    for r, record in enumerate(coord.history, start=1):
        assert (record["selected"], record["returned"], record["status"]) == (12, 12, "ok")
        norms = [x.metrics[UPDATE_NORM] for x in recorder.results if x.task.kind == UPDATE_NORM]
        norms = norms[(r - 1) * 6 : r * 6]
        uploads = [
            np.frombuffer(x.payload or b"", np.float32)
            for x in recorder.results
            if x.task.kind == FIT and x.task.round == r
        ]
        bound = float(np.median(norms))
        assert {
            x.task.config["transforms"][0]["max_norm"]
            for x in recorder.results
            if x.task.kind == FIT and x.task.round == r
        } == {bound}
        # each clipped update is the same training as stage 1's, scaled down to the bound
        got = sorted(float(np.linalg.norm(u.astype(np.float64))) for u in uploads)
        want = sorted(min(n, bound) for n in norms)
        np.testing.assert_allclose(got, want, rtol=1e-4)
    assert coord.strategy_state["clip_bound"].shape == (1,)
    reference, _ = _reference()
    np.testing.assert_allclose(coord.params, reference.params, rtol=1e-4, atol=1e-6)


_CACHE: dict[str, tuple[Coordinator, Recorder]] = {}


def _reference() -> tuple[Coordinator, Recorder]:
    if "sequential" not in _CACHE:
        _CACHE["sequential"] = _run("sequential")
    return _CACHE["sequential"]


class OverSelectionRecorder(SequentialEngine):
    """Records what the coordinator allows before each stage (a deployment's over-selection)."""

    def __init__(self, client_fn: Any) -> None:
        super().__init__(client_fn)
        self.allowed: list[bool] = []

    def allow_over_selection(self, allowed: bool) -> None:
        self.allowed.append(allowed)


def test_only_the_first_stage_of_a_round_may_over_select() -> None:
    cfg = load_config(None, ["partition.num_clients=3"])
    sim = Simulation(cfg)
    engine = OverSelectionRecorder(sim.client)
    coord = Coordinator(
        strategy=ClipToMedianNorm(client_config={"epochs": 1}),
        engine=engine,
        spec=sim.spec,
        params=sim.init_params.copy(),
        population=sim.population(),
    )

    coord.run_round(1, evaluate=False)
    coord.run_round(2, evaluate=False)

    assert isinstance(engine, OverSelects)
    assert engine.allowed == [True, False, True, False]
