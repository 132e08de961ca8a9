"""IFCA, FedPer and Ditto over gRPC: a real ``fedloom server`` and three ``fedloom client``
processes per strategy (digits, MLP 64-16-10, 2 rounds, federated evaluation) give what the
simulation gives, and each keeps its promise in a deployment:

- every round completes, and federated evaluation reports the simulation's per-client spread
  (``fed_<metric>_mean`` / ``_std`` / ``_worst10``) and the simulation's global model;
- IFCA: each client's cluster (``clusters``, ``eval_clusters``, ``cluster<j>_*``) is the
  simulation's, and the ``k`` cluster models travel down as blobs (the bytes streamed down);
- FedPer: the upload is the base layers' values only (``bytes_up``), and a client killed in round
  2 and restarted with ``--state`` keeps its personal head (the run ends as the uninterrupted
  simulation does; every head in the state files is the simulation's);
- Ditto: the personal model lives in the client's state file and is the model federated
  evaluation scores.

The server gives each client name an id on first sight, so which partition holds which id
depends on the order the clients join. The simulation each deployment is compared with gives
every client the id the server gave it (``_simulation``), so the comparison holds in any order.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedloom.client.deploy import STATE_FILE
from fedloom.client.state import ClientStateStore
from fedloom.config import load_config
from fedloom.engines import SequentialEngine
from fedloom.server.coordinator import Coordinator, Population
from fedloom.simulation import Simulation, make_coordinator
from fedloom.strategies.factory import make_strategy
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

CLIENTS = 3
ROUNDS = 2
K = 2  # IFCA's clusters
VICTIM = CLIENTS - 1  # FedPer's client killed in round 2
STRATEGIES: dict[str, dict[str, Any]] = {
    "ifca": {"name": "ifca", "clusters": K},
    # min_fit_clients: the round the victim is killed in fails and runs again once it is back
    "fedper": {"name": "fedper", "personal_layers": ["net.2"], "min_fit_clients": CLIENTS},
    "ditto": {"name": "ditto", "lambda": 0.1},
}
# The MLP on digits: net.0 is 64 -> 16, net.2 (the head FedPer keeps) 16 -> 10.
BASE_VALUES = 64 * 16 + 16
MODEL_VALUES = BASE_VALUES + 16 * 10 + 10
MODEL_BYTES = 4 * MODEL_VALUES  # float32
APP = ["--app", "tests.deploy.apps:slow_client"]


@dataclass
class Deployment:
    """What one strategy's deployment left, beside the simulation it must equal."""

    folder: Path
    records: list[dict[str, Any]]  # the server's metrics.jsonl
    model: dict[str, np.ndarray]  # the server's final model.safetensors
    ids: dict[str, int]  # the server's client id of each client name
    logs: list[Path]  # the clients' (the restarted FedPer victim's last)
    sim: Simulation  # the run's data, model and clients in this process
    reference: Coordinator  # the uninterrupted simulation, run to the end

    def state(self, i: int) -> dict[str, np.ndarray]:
        """Client ``client-i``'s state after the last round, from its ``--state`` file."""
        store = ClientStateStore.load(self.folder / f"client-state-{i}" / STATE_FILE)
        return store.get(self.ids[f"client-{i}"], ROUNDS + 1)

    def reference_state(self, i: int) -> dict[str, np.ndarray]:
        """The same client's state after the last round of the simulation."""
        engine = self.reference.engine
        assert isinstance(engine, SequentialEngine)
        return dict(engine.states.get(self.ids[f"client-{i}"], ROUNDS + 1))


def _client(
    port: int, i: int, certs: Path, folder: Path, log: Path, slow: bool = False
) -> subprocess.Popen[bytes]:
    """``client-i`` on partition i of the digits, with its own ``--state`` folder; ``slow``: as
    the test app that says when it starts round 2's fit and then takes 2 s longer."""
    data = ["--dataset", "digits", "--partition", f"{i}/{CLIENTS}"]
    env = None
    if slow:
        data = APP
        env = {
            "FEDLOOM_TEST_PARTITION": f"{i}/{CLIENTS}",
            "FEDLOOM_TEST_FIT_DELAY": "2.0",
            "FEDLOOM_TEST_DELAY_ROUNDS": "2",
        }
    extra = ["--state", str(folder / f"client-state-{i}")]
    return h.client(port, f"client-{i}", certs, log, data, extra=extra, env=env)


def _deploy(folder: Path, certs: Path, name: str) -> Deployment:
    """Run ``name`` through a server and CLIENTS clients to the end; for FedPer, kill the victim
    while it trains round 2 and start it again from its state folder."""
    config = h.write_config(
        folder / "run.yaml",
        rounds=ROUNDS,
        partition={"num_clients": CLIENTS},
        strategy=STRATEGIES[name],
        engine={"name": "sequential"},
        eval={"federated": True},
        server={"min_clients": CLIENTS},
    )
    restart = name == "fedper"
    port = h.free_port()
    state, out, server_log = folder / "server-state", folder / "out", folder / "server.log"
    logs = [folder / f"c{i}.log" for i in range(CLIENTS)]
    procs = [h.server(config, port, certs, state, out, server_log)]
    try:
        h.listening(server_log, procs[0])
        for i in range(CLIENTS):
            procs.append(_client(port, i, certs, folder, logs[i], restart and i == VICTIM))
        done = list(zip(procs[1:], logs, strict=True))
        if restart:
            victim = procs[VICTIM + 1]
            h.wait_for_line(logs[VICTIM], "fit round 2 started", 90, victim)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            assert f"round 2/{ROUNDS} |" not in h.read(server_log), "the kill came too late"
            logs.append(folder / f"c{VICTIM}-restarted.log")
            procs.append(_client(port, VICTIM, certs, folder, logs[-1]))
            done[VICTIM] = (procs[-1], logs[-1])
        assert h.wait(procs[0], 90, server_log) == 0, h.read(server_log)
        codes = [h.wait(p, 30, log) for p, log in done]
    finally:
        h.stop_all(procs)
    assert codes == [0] * CLIENTS, [h.read(log) for log in logs]
    with sqlite3.connect(state / "state.sqlite3") as db:
        ids = {str(n): int(c) for n, c in db.execute("SELECT name, client_id FROM clients")}
    sim, reference = _simulation(config, ids)
    model = load_file(str(out / "model.safetensors"))
    return Deployment(folder, h.records(out), model, ids, logs, sim, reference)


def _simulation(config: Path, ids: Mapping[str, int]) -> tuple[Simulation, Coordinator]:
    """The uninterrupted run of the same config in one process, client by client, each client
    under the id the server gave it (partition ``i`` holds the id of ``client-i``)."""
    cfg = load_config(config)
    sim = Simulation(cfg)
    part = {cid: int(name.rsplit("-", 1)[1]) for name, cid in ids.items()}
    coordinator = make_coordinator(
        cfg,
        strategy=make_strategy(cfg),
        client_fn=lambda cid: sim.client(part[cid]),
        spec=sim.spec,
        init_params=sim.init_params,
        population=Population(
            num_examples={cid: len(sim.clients[i].train) for cid, i in part.items()},
            has_test_data={cid for cid, i in part.items() if len(sim.clients[i].test)},
        ),
        central_eval=sim.central_eval,
    )
    coordinator.run(ROUNDS)
    return sim, coordinator


class Deployments:
    """One deployment per strategy, run when a test first asks for it."""

    def __init__(self, folder: Path, certs: Path) -> None:
        self.folder, self.certs = folder, certs
        self.runs: dict[str, Deployment] = {}

    def __getitem__(self, name: str) -> Deployment:
        if name not in self.runs:
            folder = self.folder / name
            folder.mkdir()
            self.runs[name] = _deploy(folder, self.certs, name)
        return self.runs[name]


@pytest.fixture(scope="module")
def deployments(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Deployments]:
    yield Deployments(tmp_path_factory.mktemp("personalized"), certs)


def _evaluation(record: Mapping[str, Any]) -> dict[str, float]:
    """The federated evaluation's numbers in a round record (IFCA's per-cluster ones too)."""
    return {
        k: v
        for k, v in record.items()
        if k.startswith(("fed_", "cluster")) and isinstance(v, (int, float))
    }


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_round_completes_with_the_simulations_model_and_per_client_spread(
    deployments: Deployments, name: str
) -> None:
    run = deployments[name]

    history = run.reference.history
    assert [(r["round"], r["status"]) for r in run.records] == [(1, "ok"), (2, "ok")]
    # IFCA's rounds after the first are two exchanges (ifca_select, then fit)
    per_round = [CLIENTS, 2 * CLIENTS if name == "ifca" else CLIENTS]
    assert [(r["returned"], r["failed"], r["rejected"]) for r in run.records] == [
        (n, 0, 0) for n in per_round
    ]
    for got, want in zip(run.records, history, strict=True):
        for stat in ("mean", "std", "worst10"):
            for metric in ("accuracy", "loss"):
                assert f"fed_{metric}_{stat}" in got
        assert _evaluation(got) == pytest.approx(_evaluation(want), rel=1e-5, abs=1e-7)
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
    final = run.reference.global_params
    assert sorted(run.model) == sorted(final)
    for key, value in final.items():
        np.testing.assert_allclose(run.model[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_ifca_reports_each_clients_cluster_and_sends_the_k_models_as_blobs(
    deployments: Deployments,
) -> None:
    run = deployments["ifca"]

    for got, want in zip(run.records, run.reference.history, strict=True):
        assert got["clusters"] == want["clusters"]  # client id -> cluster, at fit
        assert got["eval_clusters"] == want["eval_clusters"]  # and at evaluation
        assert sorted(got["clusters"]) == sorted(str(c) for c in run.ids.values())
        members = [got[f"cluster{j}_clients"] for j in range(K)]
        assert sum(members) == CLIENTS and all(members)  # every cluster has a member
        for j in range(K):
            assert got[f"cluster{j}_clients"] == want[f"cluster{j}_clients"]
            assert got[f"cluster{j}_fed_accuracy_mean"] == pytest.approx(
                want[f"cluster{j}_fed_accuracy_mean"], rel=1e-5
            )
    # Round 1: every client downloads the initial model to train, then the K cluster models to
    # evaluate on. Round 2: ifca_select names the same K models and fit one of them (all in the
    # clients' caches); evaluation downloads the K new ones (every cluster had members).
    assert [r["bytes_down"] for r in run.records] == [
        CLIENTS * (1 + K) * MODEL_BYTES,
        CLIENTS * K * MODEL_BYTES,
    ]
    for log in run.logs:
        text = h.read(log)
        assert "round 2 ifca_select done" in text and "round 2 ifca_evaluate done" in text, text


def test_fedper_uploads_the_base_layers_only_and_a_restarted_client_keeps_its_head(
    deployments: Deployments,
) -> None:
    run = deployments["fedper"]

    # each client's upload is net.0's 1,040 values (float32), nothing of net.2
    assert [r["bytes_up"] for r in run.records] == [CLIENTS * 4 * BASE_VALUES] * ROUNDS
    restarted = h.read(run.logs[-1])
    victim_id = run.ids[f"client-{VICTIM}"]
    assert f"client {victim_id}, versions of rounds 1 (" in restarted, restarted
    # the server's head is the initial one; each client's is its own, the simulation's
    init = run.sim.spec.unflatten(run.sim.init_params)
    for key in ("net.2.weight", "net.2.bias"):
        np.testing.assert_array_equal(run.model[key], init[key])
    accuracies = []
    for i in range(CLIENTS):
        state, want = run.state(i), run.reference_state(i)
        assert sorted(state) == ["fedper/net.2.bias", "fedper/net.2.weight"]
        for key, value in want.items():
            np.testing.assert_allclose(state[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        assert np.abs(state["fedper/net.2.weight"] - init["net.2.weight"]).max() > 1e-3
        # federated evaluation scored the global base layers under the client's own head
        own = {n: state.get(f"fedper/{n}", run.model[n]) for n in run.sim.spec.names}
        accuracies.append(_accuracy(run, i, own))
    _assert_spread(run.records[-1], accuracies)


def test_ditto_keeps_the_personal_model_in_client_state_and_evaluation_scores_it(
    deployments: Deployments,
) -> None:
    run = deployments["ditto"]

    spec = run.sim.spec
    global_vec = spec.flatten({n: run.model[n] for n in spec.names})  # the file sorts them
    accuracies = []
    for i in range(CLIENTS):
        state, want = run.state(i), run.reference_state(i)
        assert sorted(state) == ["ditto/personal"]
        personal = state["ditto/personal"]
        assert personal.shape == (MODEL_VALUES,)
        np.testing.assert_allclose(personal, want["ditto/personal"], rtol=1e-5, atol=1e-6)
        assert np.abs(personal - global_vec).max() > 1e-3
        # federated evaluation scored the personal model in the client's state file
        accuracies.append(_accuracy(run, i, spec.unflatten(personal)))
    _assert_spread(run.records[-1], accuracies)


def _accuracy(run: Deployment, i: int, params: Mapping[str, np.ndarray]) -> float:
    """The accuracy of ``params`` on ``client-i``'s test split."""
    scored = run.sim.client(i).evaluate(dict(params), {"round": ROUNDS})
    return float(scored.metrics["accuracy"])


def _assert_spread(record: Mapping[str, Any], accuracies: list[float]) -> None:
    """The record's per-client accuracy spread is that of ``accuracies`` (with 3 clients, the
    worst 10% is the worst client)."""
    assert record["fed_accuracy_mean"] == pytest.approx(float(np.mean(accuracies)), rel=1e-6)
    assert record["fed_accuracy_std"] == pytest.approx(float(np.std(accuracies)), rel=1e-5)
    assert record["fed_accuracy_worst10"] == pytest.approx(min(accuracies), rel=1e-6)
