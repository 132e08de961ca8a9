"""Differential privacy as a wrapper around any sum-based strategy: each client's contribution is
clipped as one vector (all of a strategy's terms together), every wrapped strategy reports the
epsilon DP-FedAvg reports for the same sampling and noise, composes with secure aggregation, and
the strategies whose sums the clip does not bound are refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.config import load_config
from fedloom.core.summands import SumPlan, Term, contribution
from fedloom.errors import ConfigError
from fedloom.simulation import Simulation
from fedloom.strategies.dp_fedavg import DPFedAvg
from fedloom.strategies.factory import make_strategy
from fedloom.strategies.private import CLIP_NORM, ROUNDS, Private
from fedloom.strategies.scaffold import CONTROL

BASE = [
    "partition.num_clients=6",
    "seed=3",
    "client.epochs=1",
    "client.batch_size=100",
    "strategy.fraction_fit=0.5",
]
CENTRAL = ["privacy.mechanism=central", "privacy.noise_multiplier=0.8", "privacy.clip_norm=0.5"]
WRAPPABLE = {
    "fedprox": ["strategy.proximal_mu=0.1"],
    "scaffold": [],
    "fedper": ["strategy.personal_layers=[net.2]"],
    "ditto": [],
    "fedsgd": [],
}


def test_a_clipped_contribution_is_clipped_as_one_vector_across_its_terms() -> None:
    # SCAFFOLD's (model delta, control delta) = ((3, 0), (0, 4)): norm 5 as one vector, so both
    # halves shrink by 5 (not each to 1 on its own); the indicator says it was clipped
    plan = SumPlan((Term("delta", 2, weighted=False), Term("control", 2, weighted=False)), clip=1.0)
    values, weights = contribution(np.array([3.0, 0.0, 0.0, 4.0]), 7, {}, plan.config(None))
    np.testing.assert_allclose(values, [0.6, 0.0, 0.0, 0.8, 0.0], rtol=1e-7)
    assert weights.tolist() == [1.0, 1.0]
    inside, _ = contribution(np.array([0.3, 0.0, 0.0, 0.4]), 7, {}, plan.config(None))
    assert inside.tolist() == [0.3, 0.0, 0.0, 0.4, 1.0]  # within the bound: unchanged, counted


@pytest.mark.parametrize("name", sorted(WRAPPABLE))
def test_every_wrapped_strategy_reports_dp_fedavgs_epsilon(name: str) -> None:
    reference = Simulation(load_config(None, [*BASE, *CENTRAL])).coordinator()
    assert type(reference.strategy) is DPFedAvg
    overrides = [*BASE, *CENTRAL, f"strategy.name={name}", *WRAPPABLE[name]]
    coordinator = Simulation(load_config(None, overrides)).coordinator()
    strategy = coordinator.strategy
    assert isinstance(strategy, Private) and type(strategy).__name__.endswith(
        type(
            make_strategy(load_config(None, [*BASE, f"strategy.name={name}", *WRAPPABLE[name]]))
        ).__name__
    )
    for r in (1, 2):
        want = reference.run_round(r, evaluate=False)
        got = coordinator.run_round(r, evaluate=False)
        assert got["status"] == "ok" and np.isfinite(coordinator.params).all()
        assert got["epsilon"] == want["epsilon"] > 0  # exactly: the same accountant call
    assert float(coordinator.strategy_state[ROUNDS]) == 2.0
    assert float(coordinator.strategy_state[CLIP_NORM]) == 0.5


def test_central_dp_with_scaffold_noises_the_model_and_the_control_variate() -> None:
    overrides = [*BASE, *CENTRAL, "strategy.name=scaffold", "privacy.noise_seed=1"]
    quiet = [*BASE, *CENTRAL, "strategy.name=scaffold", "privacy.noise_multiplier=0"]
    noisy = Simulation(load_config(None, overrides)).coordinator()
    clean = Simulation(load_config(None, quiet)).coordinator()
    noisy.run_round(1, evaluate=False)
    clean.run_round(1, evaluate=False)
    # both sums carry noise: the model and SCAFFOLD's control variate differ from the
    # noiseless run's, and the control variate is strategy state beside the accountant's
    assert np.abs(noisy.params - clean.params).max() > 1e-3
    assert np.abs(noisy.strategy_state[CONTROL] - clean.strategy_state[CONTROL]).max() > 1e-3
    assert set(noisy.strategy_state) >= {CONTROL, ROUNDS, CLIP_NORM}


def test_client_dp_with_scaffold_under_secure_aggregation_equals_the_plaintext_run() -> None:
    dp = [
        "strategy.name=scaffold",
        "privacy.mechanism=client",
        "privacy.clip_norm=0.5",
        "privacy.noise_multiplier=0",
    ]
    secure = ["secure_aggregation.enabled=true", "secure_aggregation.mode=secagg"]
    plain = Simulation(load_config(None, [*BASE, *dp])).coordinator()
    masked = Simulation(load_config(None, [*BASE, *dp, *secure])).coordinator()
    for r in (1, 2):
        assert masked.run_round(r, evaluate=False)["status"] == "ok"
        assert plain.run_round(r, evaluate=False)["status"] == "ok"
        assert np.abs(masked.params - plain.params).max() <= 1e-4
        plain.params = masked.params.copy()
        plain.strategy_state = {k: v.copy() for k, v in masked.strategy_state.items()}


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("fednova", "does not bound it"),
        ("qffl", "bounds neither"),
        ("ifca", "cluster choice in the clear"),
        ("fedbuff", "own staleness"),
    ],
)
def test_strategies_whose_sums_the_clip_does_not_bound_are_refused(name: str, match: str) -> None:
    extra = ["clients.enabled=true", "strategy.fraction_fit=1"] if name == "fedbuff" else []
    with pytest.raises(ConfigError, match=match):
        make_strategy(load_config(None, [*BASE, *CENTRAL, f"strategy.name={name}", *extra]))
