"""IFCA: the client's cluster estimate, the server's per-cluster averaging (hand-computed), and
the recovery of two label-permuted groups of clients."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from fedloom.client.base import EvalResult, FitResult
from fedloom.client.execute import execute_task
from fedloom.client.torch_client import TorchClient, get_params
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import MODEL, Blob, Task, blob_table
from fedloom.engines import SequentialEngine
from fedloom.errors import ConfigError
from fedloom.models import build_model
from fedloom.optim import ServerAdam, ServerSGD
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies import IFCA, FedAvg, Strategy
from fedloom.strategies.ifca import (
    IFCA_EVALUATE,
    SELECT,
    cluster_updates,
    initial_models,
    state_key,
)
from tests.strategies.test_fedprox import one_weight_client


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny models: more threads only contend on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ONE = ParamSpec(names=("weight",), shapes=((1, 1),), dtypes=("<f4",))


def _cluster_task(kind: str, weights: list[float]) -> tuple[Task, dict[str, Blob]]:
    blobs = [Blob.encode(ONE, Float32Codec(), np.array([w], np.float32)) for w in weights]
    roles = {MODEL: blobs[0].digest, **{f"cluster{j}": b.digest for j, b in enumerate(blobs)}}
    del roles["cluster0"]
    task = Task(kind, 1, 0, {"round": 1, "clusters": len(weights)}, roles)
    return task, blob_table(*blobs)


def test_the_client_picks_the_cluster_model_with_the_lowest_training_loss() -> None:
    # the loss is w^2 on the client's one example: 1, 0.25 and 4
    task, blobs = _cluster_task(SELECT, [1.0, -0.5, 2.0])

    result = execute_task(one_weight_client(), task, blobs)

    assert result.ok, result.error
    assert result.payload is None  # the first stage uploads nothing
    assert result.metrics == pytest.approx(
        {"cluster": 1.0, "cluster0_loss": 1.0, "cluster1_loss": 0.25, "cluster2_loss": 4.0}
    )


def test_federated_evaluation_scores_the_model_of_the_estimated_cluster() -> None:
    task, blobs = _cluster_task(IFCA_EVALUATE, [1.0, -0.5, 2.0])

    result = execute_task(one_weight_client(), task, blobs)

    assert result.ok, result.error
    assert result.metrics["cluster"] == 1.0 and result.metrics["loss"] == pytest.approx(0.25)


SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))


class NearestClient:
    """Its training loss is the distance of a model's first weight to ``target``; it uploads a
    fixed update and checks that it trains its cluster's model."""

    def __init__(self, target: float, update: list[float], n: int) -> None:
        self.target, self.update, self.num_examples = target, update, n

    def training_loss(self, params: Params) -> float:
        return abs(float(params["w"][0]) - self.target)

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        assert float(params["w"][0]) == self.target  # the model of the cluster it chose
        return FitResult({"w": np.array(self.update, np.float32)}, self.num_examples)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=self.num_examples)


def _round(server_lr: float = 1.0) -> tuple[Coordinator, dict[str, Any]]:
    clients = {
        0: NearestClient(0.0, [1.0, 2.0], 1),
        1: NearestClient(10.0, [2.0, 0.0], 1),
        2: NearestClient(10.0, [4.0, 6.0], 3),
    }
    coord = Coordinator(
        strategy=IFCA(clusters=2, server_optimizer=ServerSGD(lr=server_lr)),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population({0: 1, 1: 1, 2: 3}),
    )
    coord.strategy_state = {
        state_key(0): np.zeros(2, np.float32),
        state_key(1): np.full(2, 10.0, np.float32),
    }
    return coord, coord.run_round(1)


def test_the_server_averages_each_clusters_updates_into_its_model() -> None:
    coord, record = _round()

    state = coord.strategy_state
    # cluster 0: client 0 alone; cluster 1: 10 + (1 * [2, 0] + 3 * [4, 6]) / 4
    np.testing.assert_allclose(state[state_key(0)], [1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(state[state_key(1)], [13.5, 14.5], rtol=1e-6)
    # the run's model mirrors the cluster most examples chose (cluster 1: 4 of 5)
    np.testing.assert_allclose(coord.params, [13.5, 14.5], rtol=1e-6)
    assert record["clusters"] == {"0": 0, "1": 1, "2": 1}
    assert (record["cluster0_clients"], record["cluster1_clients"]) == (1, 2)
    assert (record["selected"], record["returned"]) == (6, 6)  # two stages of three clients


def test_server_lr_scales_each_clusters_step() -> None:
    coord, _ = _round(server_lr=0.5)

    np.testing.assert_allclose(coord.strategy_state[state_key(1)], [11.75, 12.25], rtol=1e-6)
    np.testing.assert_allclose(coord.params, [11.75, 12.25], rtol=1e-6)


class FixedClient:
    """Uploads a fixed update from the model it receives (round 1: the initial one)."""

    def __init__(self, update: list[float], n: int) -> None:
        self.update, self.num_examples = update, n

    def training_loss(self, params: Params) -> float:
        return 0.0

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        assert not params["w"].any()  # the initial model [0, 0]
        return FitResult({"w": np.array(self.update, np.float32)}, self.num_examples)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=self.num_examples)


def test_round_one_clusters_the_updates_and_starts_each_cluster_from_its_members() -> None:
    updates = {0: ([1.0, 0.0], 1), 1: ([2.0, 0.1], 1), 2: ([0.0, 1.0], 2), 3: ([0.1, 3.0], 2)}
    clients = {cid: FixedClient(u, n) for cid, (u, n) in updates.items()}
    coord = Coordinator(
        strategy=IFCA(clusters=2),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.zeros(2, np.float32),
        population=Population({cid: n for cid, (_, n) in updates.items()}),
    )

    record = coord.run_round(1)

    found = record["clusters"]
    assert found["0"] == found["1"] != found["2"] == found["3"]  # by direction, not length
    a, b = found["0"], found["2"]
    # each cluster: the initial model plus its members' example-weighted mean update
    np.testing.assert_allclose(coord.strategy_state[state_key(a)], [1.5, 0.05], rtol=1e-6)
    np.testing.assert_allclose(coord.strategy_state[state_key(b)], [0.05, 2.0], rtol=1e-6)
    np.testing.assert_allclose(coord.params, [0.05, 2.0], rtol=1e-6)  # 4 examples of 6
    assert (record["selected"], record["returned"]) == (4, 4)  # round 1 is one exchange


def test_kmeans_of_the_updates_is_seeded_and_handles_fewer_rows_than_clusters() -> None:
    rows = np.array([[1, 0], [3, 0.2], [0, 2], [0.1, 1], [-1, 0]], np.float32)

    labels = cluster_updates(rows, 3, seed=0)

    assert labels[0] == labels[1] and len({labels[0], labels[2], labels[4]}) == 3
    assert labels[2] == labels[3]
    assert cluster_updates(rows, 3, seed=0) == labels
    assert cluster_updates(rows[:1], 3, seed=0) == [0]
    assert cluster_updates(np.zeros((0, 2)), 2, seed=0) == []


def test_cluster_models_start_as_per_tensor_permutations_of_the_initial_model() -> None:
    spec = ParamSpec(names=("a", "b"), shapes=((2, 3), (4,)), dtypes=("<f4", "<f4"))
    params = np.array([1, 2, 3, 4, 5, 6, 10, 20, 30, 40], np.float32)

    models = initial_models(spec, params, 3, seed=0)

    np.testing.assert_array_equal(models[0], params)
    for m in models[1:]:  # each tensor keeps its own values
        assert sorted(m[:6]) == [1, 2, 3, 4, 5, 6] and sorted(m[6:]) == [10, 20, 30, 40]
    assert not np.array_equal(models[1], models[2])
    np.testing.assert_array_equal(initial_models(spec, params, 3, seed=0)[2], models[2])


def test_more_clusters_than_clients_and_other_server_optimisers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.clusters=4 is more than the 3 clients"):
        Coordinator(
            strategy=IFCA(clusters=4),
            engine=SequentialEngine(lambda cid: one_weight_client()),
            spec=SPEC,
            params=np.zeros(2, np.float32),
            population=Population({0: 1, 1: 1, 2: 1}),
        )
    with pytest.raises(ConfigError, match="server_optimizer=sgd without"):
        IFCA(server_optimizer=ServerSGD(momentum=0.9))
    with pytest.raises(ConfigError, match="server_optimizer=sgd without"):
        IFCA(server_optimizer=ServerAdam())


# -- recovery of two label-permuted groups ------------------------------------------------------

GROUPS = [0] * 4 + [1] * 4  # clients 0-3 and 4-7; the second group's labels are permuted


def _world(strategy: Strategy) -> Coordinator:
    """Eight clients of one 5-d, 3-class problem; group 1 sees label (y + 1) mod 3."""
    rng = np.random.default_rng(0)
    data = []
    for group in GROUPS:
        x = rng.normal(size=(60, 5)).astype(np.float32)
        y = (x[:, :3].argmax(1) + group) % 3
        data.append((x[:40], y[:40], x[40:], y[40:]))
    torch.manual_seed(0)
    model = build_model("mlp", (5,), 3, hidden=[16])

    def client_fn(cid: int) -> TorchClient:
        x, y, xt, yt = data[cid]
        return TorchClient(model, x, y, x_test=xt, y_test=yt, num_classes=3, client_id=cid)

    init = get_params(model)
    spec = ParamSpec.of(init)
    return Coordinator(
        strategy=strategy,
        engine=SequentialEngine(client_fn),
        spec=spec,
        params=spec.flatten(init),
        population=Population({c: 40 for c in range(8)}, has_test_data=set(range(8))),
        federated_eval=True,
    )


CLIENT = {"epochs": 2, "batch_size": 10, "lr": 0.1}


def test_ifca_recovers_the_groups_and_beats_one_global_model() -> None:
    clustered = _world(IFCA(clusters=2, client_config=CLIENT))
    single = _world(FedAvg(client_config=CLIENT))

    last = clustered.run(8)[-1]
    baseline = single.run(8)[-1]

    found = [last["eval_clusters"][str(c)] for c in range(8)]
    assert adjusted_rand_score(GROUPS, found) == 1.0
    # one model cannot serve both labelings: about half right; each cluster model can
    assert last["fed_accuracy_mean"] > 0.8
    assert last["fed_accuracy_mean"] > baseline["fed_accuracy_mean"] + 0.2
    assert {last["cluster0_eval_clients"], last["cluster1_eval_clients"]} == {4}
    # a client's cluster is a label: it is not pooled into a meaningless fed_cluster
    assert "fed_cluster" not in last and "fed_accuracy" in last


def test_the_cluster_models_are_checkpointed_and_a_resumed_run_goes_on_alike() -> None:
    straight = _world(IFCA(clusters=2, client_config=CLIENT))
    straight.run(3)
    first = _world(IFCA(clusters=2, client_config=CLIENT))
    first.run(2)

    resumed = _world(IFCA(clusters=2, client_config=CLIENT))
    resumed.restore(first.checkpoint())
    resumed.run(3, start_round=3)

    assert {f"strategy.{state_key(j)}" for j in range(2)} <= set(first.checkpoint())
    for j in range(2):
        np.testing.assert_array_equal(
            resumed.strategy_state[state_key(j)], straight.strategy_state[state_key(j)]
        )
    np.testing.assert_array_equal(resumed.params, straight.params)


def test_a_run_config_with_too_many_clusters_or_unknown_layers_is_refused() -> None:
    from fedloom.config import load_config
    from fedloom.simulation import Simulation

    def build(*keys: str) -> None:
        Simulation(load_config(None, ["partition.num_clients=5", "rounds=1", *keys])).coordinator()

    with pytest.raises(ConfigError, match=r"strategy\.clusters=6 is more than the 5 clients"):
        build("strategy.name=ifca", "strategy.clusters=6")
    with pytest.raises(ConfigError, match=r"personal_layers names \['net\.5'\]"):
        build("strategy.name=fedper", "strategy.personal_layers=[net.5]")
    with pytest.raises(ConfigError, match=r"personal_layers applies to fedper only"):
        build("strategy.name=ditto", "strategy.personal_layers=[net.2]")
    with pytest.raises(ConfigError, match=r"pruning\.enabled prunes the one global model"):
        build("strategy.name=ifca", "pruning.enabled=true", "pruning.start_round=1")
