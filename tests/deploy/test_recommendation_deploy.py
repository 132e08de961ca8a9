"""Federated collaborative filtering on MovieLens in a real deployment: one ``fedloom client``
process per user, row-sparse uploads over gRPC, and the run the in-process simulation gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedloom.app.clients import demo_factory
from fedloom.app.user_code import build_strategy, server_federation
from fedloom.client.fcf import FCFClient
from fedloom.config import Config, EngineConfig, load_config
from fedloom.core.task import RowSparse
from fedloom.errors import ConfigError, DeploymentError
from fedloom.recommendation import RecommendationSimulation
from fedloom.strategies.fcf import FederatedCF
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

USERS, ROUNDS, RANK = 3, 3, 4


def test_three_users_over_grpc_match_the_simulation_and_upload_their_rows_only(
    tmp_path: Path, certs: Path
) -> None:
    # Prepare: a seeded sample of 3 MovieLens users, rank-4 MF, every user every round,
    # federated evaluation every round
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=ROUNDS,
        dataset={"name": "movielens", "max_clients": USERS},
        partition={"kind": "natural"},
        model={"name": "mf", "rank": RANK},
        client={"epochs": 1, "lr": 0.4, "weight_decay": 0.6},
        engine={"name": "sequential"},  # the simulation's; the server runs the remote engine
        eval={"federated": True, "every": 1},
        server={"min_clients": USERS},
    )
    port = h.free_port()
    server_log = tmp_path / "server.log"
    procs = [h.server(config, port, certs, tmp_path / "state", tmp_path / "out", server_log)]
    try:
        h.listening(server_log, procs[0])
        # Execute: client-u is user u (--partition u/3)
        for u in range(USERS):
            data = ["--dataset", "movielens", "--partition", f"{u}/{USERS}"]
            procs.append(h.client(port, f"client-{u}", certs, tmp_path / f"client-{u}.log", data))
        # meanwhile, the same run in the in-process simulation
        sim = RecommendationSimulation(load_config(config))
        coordinator = sim.coordinator()
        history = coordinator.run(ROUNDS)
        assert h.wait(procs[0], 90, server_log) == 0, h.read(server_log)
        codes = [h.wait(p, 30, tmp_path / f"client-{u}.log") for u, p in enumerate(procs[1:])]
    finally:
        h.stop_all(procs)

    # Assert: every user's update was accepted in every round
    assert codes == [0] * USERS
    records = h.records(tmp_path / "out")
    assert [(r["returned"], r["rejected"]) for r in records] == [(USERS, 0)] * ROUNDS
    # Assert: the item factors and biases, and the federated metrics, of the simulation
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(got) == sorted(coordinator.global_params)
    for name, want in coordinator.global_params.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-7)
    for key in ("fed_rmse", "fed_mae", "fed_ndcg_at_10"):
        assert [r[key] for r in records] == pytest.approx([r[key] for r in history], abs=1e-6)
    # the progress line shows the federated RMSE of each round
    assert f"fed_rmse {records[-1]['fed_rmse']:.4f}" in h.read(server_log)
    # Assert: each upload is the bitmask over the items and the (rank + 1) float32 values of each
    # movie its user rated in training, as in the simulation; far from the dense item model
    rows = RowSparse.of(sim.spec)
    expected = sum(rows.mask_bytes + 4 * (RANK + 1) * len(u.items_train) for u in sim.users)
    assert [r["bytes_up"] for r in records] == [expected] * ROUNDS
    assert [r["bytes_up"] for r in history] == [expected] * ROUNDS
    assert expected < USERS * 4 * sim.spec.size / 2


def test_the_server_and_a_client_build_their_parts_and_refuse_what_does_not_apply(
    tmp_path: Path,
) -> None:
    # Prepare: a movielens run of 3 users under the default engine (vectorized), which the
    # simulation refuses and a deployment does not use
    cfg = Config.model_validate(
        {
            "dataset": {"name": "movielens", "max_clients": USERS},
            "partition": {"kind": "natural"},
            "model": {"name": "mf", "rank": RANK},
            "eval": {"federated": True},
        }
    )
    sim = RecommendationSimulation(
        cfg.model_copy(update={"engine": EngineConfig(name="sequential")})
    )

    # Execute
    model = server_federation(cfg)
    strategy = build_strategy(cfg, None)
    client = demo_factory("movielens", 2, USERS)(cfg, 0)

    # Assert: the simulation's item model and strategy, no central evaluation, user 2's client
    assert model.spec == sim.spec
    np.testing.assert_array_equal(model.init_params, sim.init_params)
    assert model.central_eval is None and model.data == sim.data
    assert isinstance(strategy, FederatedCF)
    assert isinstance(client, FCFClient) and [u.user for u in client.users] == [2]
    assert client.num_examples == len(sim.users[2].ratings_train)
    assert client.num_test_examples == len(sim.users[2].ratings_test)
    # Assert: a partition count other than the users, a model factory and --eval-data are refused
    with pytest.raises(DeploymentError, match=rf"this run has {USERS} users .* i/{USERS} with"):
        demo_factory("movielens", 0, 5)(cfg, 0)
    with pytest.raises(ConfigError, match="user factors stay on the clients; drop --model"):
        server_federation(cfg, model="tests.apps:make_model")
    with pytest.raises(ConfigError, match="server holds no user factor; drop --eval-data"):
        server_federation(cfg, eval_data=tmp_path / "eval.npz")
