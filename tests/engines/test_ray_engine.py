"""The Ray engine: lazy start, sequential numbers, failures as error Results, ownership of Ray.

Ray is started on the loopback interface only (``_ray_test_env``) and with two CPUs, so these tests
behave the same on a 2-core CI machine. The numeric conformance checks shared by every engine live
in ``test_conformance.py``; ``shared_ray_engine`` is the factory it uses for Ray.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from fedloom.client.base import Client, EvalResult, FitResult
from fedloom.config import load_config
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import FIT, MODEL, Blob, Task, Upload, blob_table
from fedloom.engines import ClientFn
from fedloom.engines.ray_engine import RayEngine
from fedloom.simulation import Simulation

pytestmark = pytest.mark.ray

SIZE = 4
GP = Blob.encode(
    ParamSpec(names=("w",), shapes=((SIZE,),), dtypes=("<f4",)),
    Float32Codec(),
    np.zeros(SIZE, np.float32),
)
BLOBS = blob_table(GP)


def _ray_test_env() -> None:
    """Keep Ray on 127.0.0.1 and silent. Read when ray is first imported, so set before that."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's single-machine mode (the macOS/Windows default): the node address is the loopback one.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.pop("RAY_ADDRESS", None)


def shared_ray_engine(client_fn: ClientFn) -> RayEngine:
    """A RayEngine on one local Ray instance shared by the test session, started on first use.

    The engine does not own that instance, so ``close()`` stops only its actors; starting Ray once
    instead of once per test keeps the conformance suite fast.
    """
    _ray_test_env()
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    return RayEngine(client_fn, num_workers=2)


class ConstantClient:
    """Returns ``global + 1`` as its update, or fails in the way it is told to."""

    def __init__(self, cid: int, how: str = "") -> None:
        self.cid, self.how = cid, how

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        if self.how == "raise":
            raise RuntimeError(f"client {self.cid} ran out of battery")
        if self.how == "die":
            os._exit(3)  # the whole worker process goes, as in a segfault or the OOM killer
        return FitResult(update=params["w"] + 1.0 + self.cid, num_examples=self.cid + 1)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=1)


class Clients:
    """A picklable client_fn with a few broken clients among healthy ones."""

    def __init__(self, broken: Mapping[int, str]) -> None:
        self.broken = dict(broken)

    def __call__(self, cid: int) -> Client:
        if self.broken.get(cid) == "client_fn":
            raise KeyError(f"no data for client {cid}")
        return ConstantClient(cid, self.broken.get(cid, ""))


def _fit_tasks(ids: list[int], round_num: int = 1) -> list[Task]:
    model, upload = {MODEL: GP.digest}, Upload("float32", SIZE)
    return [Task(FIT, round_num, cid, {"round": round_num}, model, upload) for cid in ids]


def test_importing_fedloom_does_not_import_ray() -> None:
    code = (
        "import sys, fedloom, fedloom.simulation, fedloom.engines.ray_engine; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


def test_two_fedavg_rounds_match_sequential_and_close_stops_the_ray_it_started() -> None:
    _ray_test_env()
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # a shared instance from another test; this one must start its own
        ray.shutdown()
    overrides = ["rounds=2", "partition.num_clients=10", "client.epochs=1", "eval.federated=true"]
    reference = Simulation(load_config(None, overrides)).coordinator()
    want = reference.run(2)
    sim = Simulation(load_config(None, [*overrides, "engine.name=ray", "engine.num_workers=2"]))
    coordinator = sim.coordinator()
    engine = coordinator.engine
    assert isinstance(engine, RayEngine) and not ray.is_initialized()  # started lazily

    got = coordinator.run(2)

    stats = engine.worker_stats()
    engine.close()
    assert not ray.is_initialized()
    np.testing.assert_allclose(coordinator.params, reference.params, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        assert (g["returned"], g["failed"]) == (w["returned"], 0)
        assert g["accuracy"] == pytest.approx(w["accuracy"])
        assert g["fed_accuracy_mean"] == pytest.approx(w["fed_accuracy_mean"])
    # Global params are decoded once per content hash, not per task: round 1 fit, round 1
    # evaluation = round 2 fit, round 2 evaluation.
    assert len(stats) == 2 and all(1 <= s["decodes"] <= 3 for s in stats)


def test_failing_and_dying_clients_give_error_results_and_the_pool_recovers() -> None:
    broken = {2: "raise", 5: "die", 7: "client_fn"}
    engine = shared_ray_engine(Clients(broken))
    engine.num_workers = 3  # more workers than the 2 CPUs: they must share, not wait forever
    try:
        results = {r.task.client_id: r for r in engine.run(_fit_tasks(list(range(10))), BLOBS)}
        again = {r.task.client_id: r for r in engine.run(_fit_tasks([0, 1, 3], 2), BLOBS)}
        workers = len(engine.worker_stats())
    finally:
        engine.close()

    assert sorted(results) == list(range(10))
    err2, err5, err7 = (results[c].error or "" for c in (2, 5, 7))
    assert "RuntimeError: client 2 ran out of battery" in err2
    assert "worker died running client 5" in err5
    assert "KeyError: 'no data for client 7'" in err7
    for cid in (0, 1, 3, 4, 6, 8, 9):
        assert results[cid].ok, results[cid].error
        np.testing.assert_array_equal(
            np.frombuffer(results[cid].payload or b"", "<f4"), np.full(SIZE, 1.0 + cid)
        )
        assert results[cid].num_examples == cid + 1
    assert all(r.ok for r in again.values()) and sorted(again) == [0, 1, 3]
    assert workers == 3


def test_no_tasks_start_nothing_and_close_is_idempotent() -> None:
    engine = RayEngine(Clients({}))

    assert list(engine.run([], BLOBS)) == []

    assert engine.worker_stats() == []
    engine.close()
    engine.close()
    with pytest.raises(ValueError, match="num_workers must be >= 1, got 0"):
        RayEngine(Clients({}), num_workers=0)
