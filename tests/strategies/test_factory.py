"""make_strategy: the strategy a Config names, with every setting it carries, or a ConfigError."""

from __future__ import annotations

import typing

import numpy as np
import pytest

import fedloom.simulation
from fedloom.aggregators import (
    CenteredClip,
    CoordinateMedian,
    Krum,
    MultiKrum,
    NormBound,
    TrimmedMean,
    WeightedMean,
)
from fedloom.config import StrategyConfig, load_config
from fedloom.core.codec import Float32Codec
from fedloom.core.params import ParamSpec
from fedloom.core.summands import Sums
from fedloom.core.task import Blob
from fedloom.errors import ConfigError
from fedloom.optim import ServerAdagrad, ServerAdam, ServerSGD, ServerYogi
from fedloom.strategies import (
    IFCA,
    QFFL,
    Ditto,
    FedAvg,
    FedBuff,
    FedNova,
    FedPer,
    FedProx,
    FedSGD,
    RoundContext,
    Scaffold,
    Strategy,
)
from fedloom.strategies.factory import STRATEGY_NAMES, make_strategy

SPEC = ParamSpec(names=("w",), shapes=((3,),), dtypes=("<f4",))
THETA = np.array([1.0, 2.0, 3.0], np.float32)


def _strategy(*overrides: str) -> Strategy:
    return make_strategy(load_config(None, overrides))


def _context() -> RoundContext:
    codec = Float32Codec()
    return RoundContext(
        round=4,
        eligible=[0, 1, 2],
        rng=np.random.default_rng(0),
        seed=9,
        spec=SPEC,
        codec=codec,
        params=THETA,
        model=Blob.encode(SPEC, codec, THETA),
        state={},
        num_clients=3,
    )


def test_every_configurable_name_builds_its_strategy() -> None:
    assert typing.get_args(StrategyConfig.model_fields["name"].annotation) == STRATEGY_NAMES
    extra = {"fedper": ["strategy.personal_layers=[net.2]"]}  # fedper needs its layers named
    built = {
        name: type(_strategy(f"strategy.name={name}", "clients.enabled=true", *extra.get(name, [])))
        for name in STRATEGY_NAMES
    }
    assert built == {
        "fedavg": FedAvg,
        "fedsgd": FedSGD,
        "fedprox": FedProx,
        "scaffold": Scaffold,
        "fednova": FedNova,
        "qffl": QFFL,
        "fedbuff": FedBuff,
        "ifca": IFCA,
        "fedper": FedPer,
        "ditto": Ditto,
    }


def test_fedavg_carries_selection_local_training_and_server_optimizer() -> None:
    strategy = _strategy(
        "strategy.fraction_fit=0.5",
        "strategy.min_fit_clients=2",
        "strategy.fraction_evaluate=0.25",
        "strategy.server_lr=0.7",
        "strategy.server_momentum=0.9",
        "client.epochs=3",
        "client.batch_size=16",
        "client.lr=0.05",
        "client.optimizer=adam",
        "client.weight_decay=0.001",
    )
    assert type(strategy) is FedAvg
    assert (strategy.fraction_fit, strategy.min_fit_clients, strategy.fraction_evaluate) == (
        0.5,
        2,
        0.25,
    )
    assert strategy.server_optimizer == ServerSGD(lr=0.7, momentum=0.9)
    assert strategy.fit_config(_context()) == {
        "epochs": 3,
        "batch_size": 16,
        "lr": 0.05,
        "optimizer": "adam",
        "momentum": 0.0,
        "weight_decay": 0.001,
        "mode": "train",
        "round": 4,
        "seed": 9,
    }


def test_server_adam() -> None:
    assert _strategy(
        "strategy.server_optimizer=adam", "strategy.server_lr=0.02"
    ).server_optimizer == (ServerAdam(lr=0.02))


def test_fedprox_sends_its_proximal_mu_to_the_clients() -> None:
    strategy = _strategy("strategy.name=fedprox", "strategy.proximal_mu=0.3")
    assert isinstance(strategy, FedProx) and strategy.proximal_mu == 0.3
    assert strategy.fit_config(_context())["local"] == {"name": "fedprox", "proximal_mu": 0.3}


def test_qffl_takes_q_its_lipschitz_estimate_and_size_sampling() -> None:
    strategy = _strategy(
        "strategy.name=qffl",
        "strategy.q=5",
        "strategy.qffl_lipschitz=2.5",
        "strategy.sampling=size",
        "client.lr=0.05",
    )
    assert isinstance(strategy, QFFL)
    assert (strategy.q, strategy.lipschitz, strategy.sampling) == (5.0, 2.5, "size")
    default = _strategy("strategy.name=qffl", "client.lr=0.05")
    assert isinstance(default, QFFL) and default.lipschitz == pytest.approx(20.0)


def test_scaffold_keeps_a_server_control_variate() -> None:
    strategy = _strategy("strategy.name=scaffold", "client.lr=0.1")
    assert isinstance(strategy, Scaffold)
    state = strategy.init_state(THETA)
    assert list(state) == ["control"]
    np.testing.assert_array_equal(state["control"], np.zeros(3, np.float32))
    config = strategy.fit_config(_context())
    assert config["local"] == {"name": "scaffold"} and config["lr"] == 0.1


@pytest.mark.parametrize(("aggregation", "expected"), [("mean", 1.5), ("sum", 3.0)])
def test_fedsgd_uploads_gradients_aggregated_as_configured(
    aggregation: str, expected: float
) -> None:
    strategy = _strategy("strategy.name=fedsgd", f"strategy.aggregation={aggregation}")
    assert isinstance(strategy, FedSGD) and strategy.aggregation == aggregation
    ctx = _context()
    assert strategy.sum_plan(ctx).terms[0].weighted == (aggregation == "mean")
    # two clients summed to 3.0 with weights summing to 2.0: the mean is 1.5, the sum 3.0
    combined = strategy.combine(Sums([np.array([3.0])], np.array([2.0]), 2), ctx)
    assert combined is not None and combined.tolist() == [expected]
    assert strategy.fit_config(_context())["mode"] == "gradient"


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "scaffold"])
def test_sum_aggregation_outside_fedsgd_is_refused(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        _strategy(f"strategy.name={name}", "strategy.aggregation=sum")
    assert str(info.value) == (
        f"strategy.aggregation='sum' applies to fedsgd only; {name} always takes the "
        "example-weighted mean"
    )


def test_robust_aggregators_are_built_with_their_parameters() -> None:
    mean = _strategy()
    assert mean.aggregator_factory is None and type(mean.aggregator()) is WeightedMean
    built = {
        name: _strategy(f"strategy.aggregator={name}", *extra).aggregator()
        for name, extra in {
            "median": [],
            "trimmed_mean": ["strategy.trimmed_mean_beta=0.3"],
            "krum": ["strategy.krum_f=2"],
            "multikrum": ["strategy.krum_f=2", "strategy.multikrum_m=3"],
            "norm_bound": ["strategy.norm_bound=0.5"],
            "centered_clip": ["strategy.centered_clip_tau=2", "strategy.centered_clip_iters=5"],
        }.items()
    }
    assert type(built["median"]) is CoordinateMedian
    trimmed = built["trimmed_mean"]
    assert isinstance(trimmed, TrimmedMean) and trimmed.beta == 0.3
    krum = built["krum"]
    assert type(krum) is Krum and (krum.f, krum.m) == (2, 1)
    multi = built["multikrum"]
    assert type(multi) is MultiKrum and (multi.f, multi.m) == (2, 3)
    bound = built["norm_bound"]
    assert isinstance(bound, NormBound) and bound.max_norm == 0.5
    clip = built["centered_clip"]
    assert isinstance(clip, CenteredClip) and (clip.tau, clip.iters) == (2.0, 5)
    # the factory gives a fresh aggregator each round, and FedSGD's mean can be replaced
    median = _strategy("strategy.aggregator=median")
    assert median.aggregator() is not median.aggregator()
    assert type(_strategy("strategy.name=fedsgd", "strategy.aggregator=median").aggregator()) is (
        CoordinateMedian
    )
    with pytest.raises(ConfigError, match=r"cannot be combined with strategy\.aggregation=sum"):
        _strategy("strategy.name=fedsgd", "strategy.aggregation=sum", "strategy.aggregator=krum")


def test_server_momentum_with_adam_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        _strategy("strategy.server_optimizer=adam", "strategy.server_momentum=0.9")
    assert str(info.value) == (
        "strategy.server_momentum=0.9 applies to server_optimizer=sgd (FedAvgM); adam keeps its "
        "own first moment (beta1): leave server_momentum at 0"
    )


def test_fedloom_simulation_still_exports_it() -> None:
    assert fedloom.simulation.make_strategy is make_strategy


def test_adaptive_server_optimizers_take_beta1_beta2_tau_from_the_config() -> None:
    yogi = _strategy(
        "strategy.server_optimizer=yogi",
        "strategy.server_lr=0.03",
        "strategy.beta1=0.5",
        "strategy.beta2=0.9",
        "strategy.tau=0.01",
    )
    assert yogi.server_optimizer == ServerYogi(lr=0.03, beta1=0.5, beta2=0.9, tau=0.01)
    adagrad = _strategy("strategy.server_optimizer=adagrad", "strategy.server_lr=0.1")
    assert adagrad.server_optimizer == ServerAdagrad(lr=0.1)
    with pytest.raises(ConfigError, match=r"strategy\.tau=0\.01 applies to the adaptive"):
        _strategy("strategy.tau=0.01")
    with pytest.raises(ConfigError, match=r"strategy\.beta2=0\.9 applies to server_optimizer=adam"):
        _strategy("strategy.server_optimizer=adagrad", "strategy.beta2=0.9")
