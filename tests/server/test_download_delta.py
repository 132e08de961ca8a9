"""transport.download_delta: each client is sent the model as a delta against the model it holds."""

from __future__ import annotations

import numpy as np

from fedloom.config import load_config
from fedloom.core.task import BASE, MODEL
from fedloom.server.coordinator import Coordinator
from fedloom.simulation import Simulation

BASE_ARGS = ["rounds=3", "partition.num_clients=4", "client.epochs=1", "engine.name=sequential"]


def _run(*overrides: str) -> tuple[Coordinator, list[dict[str, object]]]:
    sim = Simulation(load_config(overrides=[*BASE_ARGS, *overrides]))
    coordinator = sim.coordinator()
    return coordinator, coordinator.run(3)


def test_float32_deltas_give_the_dense_run_and_its_bytes() -> None:
    dense, dense_history = _run()
    delta, delta_history = _run("transport.download_delta=true")

    # base + (params - base) is params up to float32 rounding
    np.testing.assert_allclose(delta.params, dense.params, rtol=1e-5, atol=1e-6)
    for got, want in zip(delta_history, dense_history, strict=True):
        assert got["bytes_down"] == want["bytes_down"] and got["bytes_up"] == want["bytes_up"]


def test_a_lossy_downlink_as_deltas_tracks_the_server_model() -> None:
    # top-k 10% of the model keeps a tenth of the weights every round; top-k of the delta against
    # what the client holds sends what it is still missing, so its copy converges
    chain = "transport.download=[{topk: 0.1}]"
    plain, _ = _run(chain)
    delta, _ = _run(chain, "transport.download_delta=true")

    def client_error(coordinator: Coordinator) -> float:
        ctx = coordinator._context(4, np.random.default_rng(0))
        tasks, blobs = coordinator._prepare(
            coordinator.strategy.configure_fit(ctx), {ctx.model.digest: ctx.model}, ctx
        )
        held = blobs[tasks[0].blobs[MODEL]].decode(blobs)
        return float(np.linalg.norm(held - coordinator.params) / np.linalg.norm(coordinator.params))

    assert client_error(delta) < 0.75 * client_error(plain)


def test_a_client_seen_before_gets_a_delta_against_its_own_model_and_the_base_is_free() -> None:
    coordinator, history = _run("transport.download=[int8]", "transport.download_delta=true")
    ctx = coordinator._context(4, np.random.default_rng(0))
    before = dict(coordinator._held)

    tasks, blobs = coordinator._prepare(
        coordinator.strategy.configure_fit(ctx), {ctx.model.digest: ctx.model}, ctx
    )

    # every client trained in round 3, so all hold one model: one delta, one base, for all
    assert {t.blobs[BASE] for t in tasks} == set(before.values())
    assert len({t.blobs[MODEL] for t in tasks}) == 1
    delta = blobs[tasks[0].blobs[MODEL]]
    assert delta.base == tasks[0].blobs[BASE]
    # int8 is fixed-width: a delta costs what the model costs, and the base is never counted
    size = coordinator.spec.size
    int8_model = size + 4 * -(-size // 256)
    assert len(delta.payload) == int8_model
    assert all(r["bytes_down"] == 4 * int8_model for r in history)


def test_a_client_new_to_the_run_gets_the_whole_model_and_few_models_are_kept() -> None:
    coordinator, _ = _run("transport.download_delta=true")
    coordinator._held.pop(0)
    coordinator.held_models = 1
    ctx = coordinator._context(4, np.random.default_rng(0))

    tasks, _ = coordinator._prepare(
        coordinator.strategy.configure_fit(ctx), {ctx.model.digest: ctx.model}, ctx
    )

    new = [t for t in tasks if t.client_id == 0]
    assert BASE not in new[0].blobs and new[0].blobs[MODEL] == ctx.model.digest
    assert all(BASE in t.blobs for t in tasks if t.client_id != 0)
    assert len(coordinator._bases) == 1
