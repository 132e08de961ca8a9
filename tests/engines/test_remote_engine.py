"""The remote engine in the conformance suite: tasks go over a real gRPC server on 127.0.0.1 to
deployment clients (in threads of this process) and come back with the sequential engine's
numbers, for plain local training, FedProx and SCAFFOLD (whose client state the deployment clients
keep across rounds themselves)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pytest

from fedloom.client.torch_client import TorchClient
from fedloom.core.codec import Float32Codec
from fedloom.core.task import Blob, Blobs, Result, Task, blob_table
from fedloom.engines import SequentialEngine
from fedloom.engines.remote import RemoteEngine
from tests.engines.conformance import (
    CASES_BY_NAME,
    World,
    assert_same_result,
    fit_task,
    make_world,
    reference,
)
from tests.transport.conftest import serve, start_client, wait_ready

pytestmark = [pytest.mark.deploy, pytest.mark.usefixtures("single_torch_thread")]

CASE = "mlp-sgd-unequal"


@contextmanager
def remote_engine(world: World) -> Iterator[RemoteEngine]:
    """A plaintext server and one deployment client per client of the world, each with its own
    copy of the model (they train at the same time, in threads)."""

    def client_fn(cid: int) -> TorchClient:
        client = world.client_fn(cid)
        assert isinstance(client, TorchClient)
        client.model = copy.deepcopy(client.model)
        return client

    running = serve(None, "none")
    clients = len(world.case.sizes)
    started = [start_client(running, None, f"client-{i}", client_fn) for i in range(clients)]
    try:
        wait_ready(running, clients)
        yield RemoteEngine(running.hub, deadline_s=120)
        running.hub.finish()
        assert [s.join() for s in started] == [0] * clients
    finally:
        running.stop()


def _by_client(results: Iterator[Result], tasks: Sequence[Task]) -> dict[int, Result]:
    got = {r.task.client_id: r for r in results}
    assert sorted(got) == sorted(t.client_id for t in tasks)
    return got


def test_fit_results_match_the_sequential_engine() -> None:
    world = make_world(CASES_BY_NAME[CASE])
    tasks = world.tasks()

    with remote_engine(world) as engine:
        got = _by_client(engine.run(tasks, world.blobs), tasks)

    for cid, want in reference(CASE).items():
        assert_same_result(got[cid], want)


LOCAL = {
    "fedprox": {"name": "fedprox", "proximal_mu": 0.1},
    "scaffold": {"name": "scaffold"},
}


def _round_tasks(world: World, algorithm: str, round_num: int, control: Blob) -> list[Task]:
    config = {**world.case.config, "local": LOCAL[algorithm], "round": round_num, "seed": 7}
    if algorithm == "scaffold":
        extra, parts = {"control": control}, 2
    else:
        extra, parts = {}, 1
    return [
        fit_task(world.global_params, cid, config, round_num, extra, parts)
        for cid in range(len(world.case.sizes))
    ]


@pytest.mark.parametrize("algorithm", list(LOCAL))
def test_hooked_local_training_matches_the_sequential_engine(algorithm: str) -> None:
    # Prepare: SCAFFOLD's rounds 2 and 3 (round 3 starts from the control variate each client
    # kept from round 2); FedProx's round 2
    world = make_world(CASES_BY_NAME[CASE])
    spec = world.global_params.spec
    noise = np.random.default_rng(5).normal(scale=0.05, size=spec.size).astype(np.float32)
    control = Blob.encode(spec, Float32Codec(), noise)
    blobs: Blobs = blob_table(world.global_params, control)
    rounds = (2, 3) if algorithm == "scaffold" else (2,)
    plan = [_round_tasks(world, algorithm, r, control) for r in rounds]
    sequential = SequentialEngine(world.client_fn)
    try:
        want = [_by_client(sequential.run(tasks, blobs), tasks) for tasks in plan]
    finally:
        sequential.close()

    # Execute
    with remote_engine(world) as engine:
        got = [_by_client(engine.run(tasks, blobs), tasks) for tasks in plan]

    # Assert: SCAFFOLD's delta_c is -delta / (K * lr): it carries delta's float error times
    # 1 / (K * lr)
    atol = 3e-5 if algorithm == "scaffold" else 1e-5
    for got_round, want_round in zip(got, want, strict=True):
        for cid, result in want_round.items():
            assert_same_result(got_round[cid], result, atol=atol)
