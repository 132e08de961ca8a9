"""DP-FedAvg through the real round loop: clipping, noise, the expected-count divisor, adaptive
clipping, the accountant, the budget stop and the checkpoint."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import dp_accounting as dpa
import numpy as np
import pytest

from fedloom.client.base import EvalResult, FitResult
from fedloom.client.execute import execute_task
from fedloom.config import load_config
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import blob_table
from fedloom.engines import SequentialEngine
from fedloom.errors import ConfigError
from fedloom.privacy import GaussianRounds, epsilon
from fedloom.privacy.noise import gaussian_noise
from fedloom.server.coordinator import Coordinator, Population
from fedloom.simulation import Simulation
from fedloom.strategies.dp_fedavg import CLIP_NORM, ROUNDS, DPFedAvg
from fedloom.strategies.factory import make_strategy
from fedloom.strategies.ldp_fedavg import PARTICIPATION, LocalDPFedAvg


class DeltaClient:
    """Uploads a fixed update."""

    def __init__(self, delta: list[float] | np.ndarray) -> None:
        self.delta = np.asarray(delta, np.float32)

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        return FitResult(update={"w": self.delta.copy()}, num_examples=7)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=1)


def _coordinator(strategy: DPFedAvg, deltas: list[Any], seed: int = 0) -> Coordinator:
    size = len(deltas[0])
    clients = {i: DeltaClient(d) for i, d in enumerate(deltas)}
    return Coordinator(
        strategy=strategy,
        engine=SequentialEngine(clients.__getitem__),
        spec=ParamSpec(names=("w",), shapes=((size,),), dtypes=("<f4",)),
        params=np.zeros(size, np.float32),
        population=Population(dict.fromkeys(clients, 7)),
        seed=seed,
    )


def test_updates_are_clipped_summed_unweighted_and_divided_by_the_cohort() -> None:
    # [3, 4] has norm 5 -> clipped to [0.6, 0.8]; [0.3, 0] is inside C = 1
    coord = _coordinator(DPFedAvg(noise_multiplier=0.0), [[3, 4], [0.3, 0]])
    record = coord.run_round(1)
    np.testing.assert_allclose(coord.params, [0.45, 0.4], rtol=1e-6)
    assert record["unclipped_fraction"] == 0.5
    assert record["clip_norm"] == 1.0
    assert record["epsilon"] == np.inf and record["delta"] == 1e-5


def test_noise_is_z_times_c_and_poisson_divides_by_the_expected_count() -> None:
    # 10 clients, q = 0.5: the divisor is q N = 5 however many were sampled
    strategy = DPFedAvg(
        noise_multiplier=1.5,
        clip_norm=2.0,
        fraction_fit=0.5,
        sampling="poisson",
        noise_seed=42,
    )
    coord = _coordinator(strategy, [[0.5, 0.0, 0.0]] * 10, seed=0)
    record = coord.run_round(1)
    noise = gaussian_noise(4, 1.0, 1, seed=42)[:3]
    expected = (record["returned"] * np.array([0.5, 0, 0]) + 1.5 * 2.0 * noise) / 5.0
    np.testing.assert_allclose(coord.params, expected, rtol=1e-5)
    assert record["returned"] == record["selected"] == 3  # a Poisson cohort: 3 this time


def test_the_added_noise_has_the_configured_standard_deviation() -> None:
    # Zero updates: the released sum is pure noise; z C = 0.8 * 2.5 = 2
    strategy = DPFedAvg(noise_multiplier=0.8, clip_norm=2.5, noise_seed=7)
    coord = _coordinator(strategy, [np.zeros(200_000)] * 4)
    coord.run_round(1)
    noise = coord.params.astype(np.float64) * 4  # undo the division by the 4 clients
    assert noise.std() == pytest.approx(2.0, rel=0.01)  # 1% is six standard errors
    assert abs(noise.mean()) < 5 * 2.0 / np.sqrt(noise.size)


def test_secure_noise_has_the_configured_std_and_differs_every_call() -> None:
    a, b = gaussian_noise(100_001, 3.0, 1), gaussian_noise(100_001, 3.0, 1)
    assert a.shape == (100_001,)
    assert a.std() == pytest.approx(3.0, rel=0.015)
    assert abs(a.mean()) < 5 * 3.0 / np.sqrt(a.size)
    assert not np.array_equal(a, b)
    # the fraction inside one std of a normal is 0.6827
    assert np.mean(np.abs(a) < 3.0) == pytest.approx(0.6827, abs=0.005)


@pytest.mark.parametrize("start", [0.1, 10.0])
@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_adaptive_clip_norm_converges_to_the_target_quantile(start: float, noise: float) -> None:
    # 100 clients with update norms spread from 0.5 to 2 (median 1); C starts 10x off
    rng = np.random.default_rng(0)
    norms = np.linspace(0.5, 2.0, 100)
    directions = rng.normal(size=(100, 3))
    deltas = directions / np.linalg.norm(directions, axis=1, keepdims=True) * norms[:, None]
    strategy = DPFedAvg(
        noise_multiplier=noise,
        clip_norm=start,
        adaptive=True,
        target_quantile=0.5,
        clip_lr=0.2,
        noise_seed=1,
    )
    coord = _coordinator(strategy, list(deltas))
    for r in range(1, 61):
        coord.run_round(r, evaluate=False)
    clip = float(coord.strategy_state[CLIP_NORM])
    assert clip == pytest.approx(float(np.median(norms)), rel=0.1 if noise else 0.03)
    fractions = [h["unclipped_fraction"] for h in coord.history[-20:]]
    assert np.mean(fractions) == pytest.approx(0.5, abs=0.08)


def test_epsilon_is_dp_accountings_for_the_runs_own_settings() -> None:
    cfg = load_config(
        overrides=[
            "rounds=3",
            "partition.num_clients=20",
            "strategy.fraction_fit=0.25",
            "strategy.sampling=poisson",
            "privacy.mechanism=central",
            "privacy.noise_multiplier=0.9",
            "privacy.delta=1e-4",
            "privacy.noise_seed=0",
            "client.epochs=1",
            "engine.name=sequential",
        ]
    )
    history = Simulation(cfg).coordinator().run(3)
    for r, record in enumerate(history, start=1):
        accountant = dpa.rdp.RdpAccountant()
        event = dpa.PoissonSampledDpEvent(0.25, dpa.GaussianDpEvent(0.9))
        accountant.compose(event, r)
        assert record["epsilon"] == accountant.get_epsilon(1e-4)
        assert record["delta"] == 1e-4


def test_max_epsilon_stops_before_the_round_that_would_exceed_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    strategy = DPFedAvg(noise_multiplier=1.0, fraction_fit=0.5, sampling="poisson")
    eps = [strategy.epsilon_after(r, 10, 5) for r in (1, 2, 3)]
    strategy.max_epsilon = (eps[1] + eps[2]) / 2
    coord = _coordinator(strategy, [[0.1, 0.0]] * 10)
    coord.eval_every = 5
    evaluated: list[int] = []

    def central_eval(params: Params) -> dict[str, Any]:
        evaluated.append(1)
        return {"loss": 0.0}

    coord.central_eval = central_eval
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        history = coord.run(10)
    assert [h["round"] for h in history] == [1, 2]
    assert history[-1]["epsilon"] == eps[1] <= strategy.max_epsilon
    assert "loss" in history[-1] and evaluated == [1]  # the final model is evaluated
    assert "stopping before round 3: round 3 would bring epsilon to" in caplog.text
    assert float(coord.strategy_state[ROUNDS]) == 2


def test_the_accountant_and_clip_norm_resume_from_a_checkpoint() -> None:
    def strategy() -> DPFedAvg:
        return DPFedAvg(
            noise_multiplier=1.0,
            fraction_fit=0.5,
            sampling="poisson",
            adaptive=True,
            clip_lr=0.5,
            clipped_count_stddev=1.0,  # m / 20 = 0.25 is too little noise to share z = 1 with
            noise_seed=5,
        )

    deltas = [[0.1 * i, 0.0] for i in range(1, 11)]
    whole = _coordinator(strategy(), deltas)
    whole.run(4)
    first = _coordinator(strategy(), deltas)
    first.run(2)
    resumed = _coordinator(strategy(), deltas)
    resumed.restore(first.checkpoint())
    resumed.run(4, start_round=3)
    assert [h["epsilon"] for h in resumed.history] == [h["epsilon"] for h in whole.history[2:]]
    assert [h["clip_norm"] for h in resumed.history] == [h["clip_norm"] for h in whole.history[2:]]
    np.testing.assert_array_equal(resumed.params, whole.params)


def _config(*overrides: str) -> Any:
    return load_config(overrides=["privacy.mechanism=central", *overrides])


def test_bad_privacy_settings_name_the_key(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match=re.escape("privacy.clip_norm: got -1")):
        _config("privacy.clip_norm=-1")
    with pytest.raises(ConfigError, match=re.escape("privacy.noise_multiplier=0 adds no noise")):
        _config("privacy.noise_multiplier=0", "privacy.max_epsilon=3")
    with pytest.raises(
        ConfigError, match=re.escape("privacy.accountant=pld has no analysis of fixed-size")
    ):
        _config("privacy.accountant=pld")
    with pytest.raises(ConfigError, match=re.escape("privacy.clipping=adaptive needs the server")):
        _config("privacy.mechanism=client", "privacy.clipping=adaptive")
    with pytest.raises(ConfigError, match=re.escape("needs strategy.name=fedavg")):
        _config("privacy.mechanism=local", "strategy.name=fedprox")
    with pytest.raises(ConfigError, match=re.escape("use aggregator=mean with differential")):
        _config("strategy.aggregator=median")
    with pytest.raises(
        ConfigError, match=re.escape("privacy.max_epsilon=0.1 is exceeded by the first")
    ):
        make_strategy(_config("privacy.max_epsilon=0.1"))
    with pytest.raises(
        ConfigError, match=re.escape("privacy.noise_multiplier=1 is too small to share")
    ):
        make_strategy(_config("privacy.clipping=adaptive", "partition.num_clients=10"))
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        make_strategy(_config())
    assert "strategy.fraction_fit=1 with strategy.sampling=fixed" in caplog.text
    assert "sampling amplifies nothing" in caplog.text


def test_client_clipping_releases_what_central_clipping_releases() -> None:
    deltas = [[3.0, 4.0], [0.3, 0.0], [0.0, -2.0]]
    central = _coordinator(DPFedAvg(noise_multiplier=0.7, noise_seed=4), deltas)
    client = _coordinator(DPFedAvg(mechanism="client", noise_multiplier=0.7, noise_seed=4), deltas)
    central.run(2)
    history = client.run(2)
    np.testing.assert_allclose(client.params, central.params, rtol=1e-6)
    assert [h["epsilon"] for h in history] == [h["epsilon"] for h in central.history]
    assert "unclipped_fraction" not in history[0]  # the server does not see the norms


def _ldp_noise(seed: int, round_num: int, client_id: int, size: int) -> np.ndarray:
    rng = np.random.default_rng([seed, round_num, client_id, 0x6E6F697365])
    return rng.standard_normal(size, dtype=np.float32)


def test_local_dp_clients_noise_their_clipped_updates_and_are_accounted_one_by_one() -> None:
    # 4 clients, 2 a round: each client's epsilon composes only the rounds it took part in
    strategy = LocalDPFedAvg(noise_multiplier=2.0, clip_norm=1.0, fraction_fit=0.5)
    deltas = [[3.0, 4.0], [0.3, 0.0], [0.0, -2.0], [0.1, 0.1]]
    coord = _coordinator(strategy, deltas, seed=2)
    before = coord.params.copy()
    record = coord.run_round(1)
    chosen = sorted(t for t in coord.strategy_state[PARTICIPATION][:, 0].tolist())
    clipped = {0: [0.6, 0.8], 1: [0.3, 0.0], 2: [0.0, -1.0], 3: [0.1, 0.1]}
    expected = sum(np.array(clipped[c]) + 2.0 * _ldp_noise(2, 1, c, 2) for c in chosen) / 2
    np.testing.assert_allclose(coord.params - before, expected, rtol=1e-5, atol=1e-6)
    assert (
        record["epsilon"]
        == strategy.client_epsilon(1)
        == epsilon(GaussianRounds(2.0, 1, 1, "none"), 1, 1e-5)
    )

    for r in range(2, 7):
        coord.run_round(r, evaluate=False)
    table = coord.strategy_state[PARTICIPATION]
    assert table[:, 1].sum() == 12  # 2 clients x 6 rounds
    assert coord.history[-1]["epsilon"] == strategy.client_epsilon(int(table[:, 1].max()))
    strategy.max_epsilon = strategy.client_epsilon(int(table[:, 1].max()))
    reason = coord.stop_reason()
    assert reason is not None and "over privacy.max_epsilon" in reason


def test_a_deployment_clients_secret_keeps_its_local_noise_from_the_server() -> None:
    # the server knows (seed, round, client): without the client's secret it could recompute
    # and subtract the noise
    coord = _coordinator(LocalDPFedAvg(noise_multiplier=1.0), [[0.2, 0.1]])
    ctx = coord._context(1, np.random.default_rng(0))
    task = LocalDPFedAvg(noise_multiplier=1.0).configure_fit(ctx)[0]
    blobs = blob_table(ctx.model)
    client = DeltaClient([0.2, 0.1])
    plain = [execute_task(client, task, blobs).payload for _ in range(2)]
    secret = [execute_task(client, task, blobs, noise_secret=s).payload for s in (1, 2)]
    assert plain[0] == plain[1]  # reproducible in simulation, on every engine
    assert secret[0] != plain[0] and secret[0] != secret[1]
