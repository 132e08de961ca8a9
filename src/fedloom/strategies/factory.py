"""The strategy a Config names: ``strategy.name`` and its settings turned into a ``Strategy``.

The one place that knows every built-in algorithm by name, so ``fedloom run``, ``fedloom server``
and ``fedloom.simulate`` build the same strategy from the same config. The strategy files stay free
of Config: a strategy is constructed from plain values and can be used without one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fedloom.aggregators import (
    Aggregator,
    CenteredClip,
    CoordinateMedian,
    Krum,
    MultiKrum,
    NormBound,
    TrimmedMean,
)
from fedloom.config import ClientConfig, Config, DPSGDConfig
from fedloom.errors import ConfigError
from fedloom.optim import make_server_optimizer
from fedloom.privacy.adaptive_clipping import default_count_stddev, split_noise
from fedloom.secagg import Settings as SecAggSettings
from fedloom.strategies.base import Strategy
from fedloom.strategies.channel import Channel, make_channel
from fedloom.strategies.ditto import Ditto
from fedloom.strategies.dp_fedavg import DPFedAvg
from fedloom.strategies.fedavg import FedAvg
from fedloom.strategies.fedbuff import FedBuff
from fedloom.strategies.fednova import FedNova
from fedloom.strategies.fedper import FedPer
from fedloom.strategies.fedprox import FedProx
from fedloom.strategies.fedsgd import FedSGD
from fedloom.strategies.ifca import IFCA
from fedloom.strategies.ldp_fedavg import LocalDPFedAvg
from fedloom.strategies.private import Private, with_privacy
from fedloom.strategies.qffl import QFFL
from fedloom.strategies.scaffold import Scaffold

__all__ = ["STRATEGY_NAMES", "aggregator_factory", "client_config", "make_strategy"]

log = logging.getLogger("fedloom")

STRATEGY_NAMES = (
    "fedavg", "fedsgd", "fedprox", "scaffold", "fednova", "qffl", "fedbuff", "ifca", "fedper",
    "ditto",
)  # fmt: skip


def client_config(client: ClientConfig, dp_sgd: DPSGDConfig | None = None) -> dict[str, Any]:
    """The local-training settings every fit task carries, so a client trains as the run's
    config says even when it was built with other defaults (a deployment client)."""
    extra: dict[str, Any] = {}
    if dp_sgd is not None and dp_sgd.enabled:
        extra["dp_sgd"] = {
            "max_grad_norm": dp_sgd.max_grad_norm,
            "noise_multiplier": dp_sgd.noise_multiplier,
        }
    return {
        **extra,
        "epochs": client.epochs,
        "batch_size": client.batch_size,
        "lr": client.lr,
        "optimizer": client.optimizer,
        "momentum": client.momentum,
        "weight_decay": client.weight_decay,
    }


def aggregator_factory(cfg: Config) -> Callable[[], Aggregator] | None:
    """The robust aggregator ``strategy.aggregator`` names, with its parameters (None: the
    streaming example-weighted mean)."""
    s = cfg.strategy
    factories: dict[str, Callable[[], Aggregator]] = {
        "median": CoordinateMedian,
        "trimmed_mean": lambda: TrimmedMean(s.trimmed_mean_beta),
        "krum": lambda: Krum(s.krum_f),
        "multikrum": lambda: MultiKrum(s.krum_f, s.multikrum_m),
        "norm_bound": lambda: NormBound(s.norm_bound),
        "centered_clip": lambda: CenteredClip(s.centered_clip_tau, s.centered_clip_iters),
    }
    return factories.get(s.aggregator)


def secure_aggregation(cfg: Config) -> SecAggSettings | None:
    """The protocol settings of ``secure_aggregation`` when it is enabled (Config has checked
    that it composes with the rest of the run)."""
    sa = cfg.secure_aggregation
    if not sa.enabled:
        return None
    return SecAggSettings(
        mode=sa.mode,
        neighbours=sa.neighbours,
        threshold=sa.threshold,
        clip_range=sa.clip_range,
        quantization_bits=sa.quantization_bits,
        modulus_bits=sa.modulus_bits,
    )


def aggregation_channel(cfg: Config) -> Channel:
    """The channel the config's uploads travel by: ``Secure`` with ``secure_aggregation``'s
    settings when it is enabled, else ``Plain``."""
    return make_channel(secure_aggregation(cfg))


def make_strategy(cfg: Config) -> Strategy:
    """The strategy ``cfg.strategy.name`` with the config's selection, local-training and server
    optimiser settings.

    Raises ``ConfigError`` for settings the chosen algorithm cannot honour, rather than ignoring
    them: ``strategy.aggregation=sum`` outside FedSGD, ``strategy.server_momentum`` with Adam.
    """
    s = cfg.strategy
    common: dict[str, Any] = dict(
        fraction_fit=s.fraction_fit,
        min_fit_clients=s.min_fit_clients,
        fraction_evaluate=s.fraction_evaluate,
        client_config=client_config(cfg.client, cfg.privacy.dp_sgd),
        server_optimizer=make_server_optimizer(
            s.server_optimizer, s.server_lr, s.server_momentum, s.beta1, s.beta2, s.tau
        ),
        sampling=s.sampling,
        max_update_norm=s.max_update_norm,
        max_update_norm_action=s.max_update_norm_action,
        aggregator_factory=aggregator_factory(cfg),
        finetune_epochs=cfg.eval.finetune_epochs,
    )
    if s.name == "fedsgd" and s.aggregation == "sum" and s.aggregator != "mean":
        raise ConfigError(
            f"strategy.aggregator={s.aggregator!r} replaces the mean; it cannot be combined with "
            "strategy.aggregation=sum"
        )
    strategy = _algorithm(cfg, common)
    if cfg.privacy.mechanism in ("central", "client") and not isinstance(strategy, DPFedAvg):
        return private(cfg, strategy)
    return strategy


def _algorithm(cfg: Config, common: dict[str, Any]) -> Strategy:
    s = cfg.strategy
    if s.name == "fedsgd":
        return FedSGD(aggregation=s.aggregation, **common)
    if s.aggregation != "mean":
        raise ConfigError(
            f"strategy.aggregation={s.aggregation!r} applies to fedsgd only; "
            f"{s.name} always takes the example-weighted mean"
        )
    if s.name == "fedprox":
        return FedProx(proximal_mu=s.proximal_mu, **common)
    if s.name == "scaffold":
        return Scaffold(**common)
    if s.name == "fednova":
        return FedNova(**common)
    if s.name == "qffl":
        return QFFL(q=s.q, lipschitz_estimate=s.qffl_lipschitz, **common)
    if s.name == "fedbuff":
        return fedbuff(cfg, common)
    if s.name in ("ifca", "fedper", "ditto"):
        return personalised(cfg, common)
    if s.name == "fedavg" and cfg.privacy.mechanism != "none":
        return dp_fedavg(cfg, common)
    if s.name == "fedavg":
        return FedAvg(**common)
    # Config validates the name; this guards a name added there but not here.
    raise ConfigError(f"strategy.name={s.name!r}: allowed {', '.join(map(repr, STRATEGY_NAMES))}")


def fedbuff(cfg: Config, common: dict[str, Any]) -> FedBuff:
    """FedBuff with ``strategy.buffer_size`` and ``strategy.concurrency``; refuses the settings
    of synchronous selection and robust aggregation, which it has no use for. The simulation
    runs it on the virtual clock (``fedloom.engines.virtual_time``)."""
    s = cfg.strategy
    if s.aggregator != "mean":
        raise ConfigError(
            f"strategy.aggregator={s.aggregator!r}: fedbuff takes the staleness-weighted mean "
            "of its buffer; use aggregator=mean"
        )
    if s.fraction_fit != 1 or s.sampling != "fixed":
        raise ConfigError(
            "strategy.fraction_fit and strategy.sampling select a synchronous round's cohort; "
            "fedbuff keeps strategy.concurrency clients at work instead: leave them at their "
            "defaults (1.0, fixed)"
        )
    return FedBuff(buffer_size=s.buffer_size, concurrency=s.concurrency, **common)


def _privacy_settings(cfg: Config) -> dict[str, Any]:
    p = cfg.privacy
    return dict(
        mechanism="central" if p.mechanism == "central" else "client",
        clip_norm=p.clip_norm,
        noise_multiplier=p.noise_multiplier,
        delta=p.delta,
        adaptive=p.clipping == "adaptive",
        target_quantile=p.target_quantile,
        clip_lr=p.clip_lr,
        clipped_count_stddev=p.clipped_count_stddev,
        accountant=p.accountant,
        max_epsilon=p.max_epsilon,
        noise_seed=p.noise_seed,
    )


def dp_fedavg(cfg: Config, common: dict[str, Any]) -> DPFedAvg:
    """DP-FedAvg (central or client clipping) or local-DP FedAvg from the config's ``privacy``
    section (see ``private``)."""
    kind = LocalDPFedAvg if cfg.privacy.mechanism == "local" else DPFedAvg
    strategy = kind(**_privacy_settings(cfg), **common)
    _check_privacy(cfg, strategy)
    return strategy


def private(cfg: Config, strategy: Strategy) -> Strategy:
    """``strategy`` with the config's central or client-side differential privacy around its
    sums (``strategies.private``); says when sampling amplifies nothing and refuses a budget that
    the first round already exceeds, or a strategy the wrapper cannot bound."""
    wrapped = with_privacy(strategy, **_privacy_settings(cfg))
    assert isinstance(wrapped, Private)
    _check_privacy(cfg, wrapped)
    return wrapped


def _check_privacy(cfg: Config, strategy: Private) -> None:
    p, s = cfg.privacy, cfg.strategy
    if s.fraction_fit == 1 and s.sampling == "fixed" and p.mechanism != "local":
        log.warning(
            "privacy: strategy.fraction_fit=1 with strategy.sampling=fixed takes every client "
            "every round, so sampling amplifies nothing; epsilon is accounted for that (q = 1). "
            "Lower strategy.fraction_fit (and set strategy.sampling=poisson) for amplification"
        )
    if p.noise_multiplier == 0:
        log.warning("privacy.noise_multiplier=0: updates are clipped but epsilon is infinite")
    population, sample = strategy.cohort(cfg.partition.num_clients)
    if strategy.adaptive:  # the count must be able to share the noise with the sum
        split_noise(p.noise_multiplier, p.clipped_count_stddev or default_count_stddev(sample))
    if p.max_epsilon is not None:
        first = (
            strategy.client_epsilon(1)
            if isinstance(strategy, LocalDPFedAvg)
            else strategy.epsilon_after(1, population, sample)
        )
        if first > p.max_epsilon:
            raise ConfigError(
                f"privacy.max_epsilon={p.max_epsilon:g} is exceeded by the first round already "
                f"(epsilon {first:.4f} at delta {p.delta:g} with noise multiplier "
                f"{p.noise_multiplier:g}); raise privacy.noise_multiplier (fedloom privacy "
                "calibrates it) or privacy.max_epsilon"
            )


def personalised(cfg: Config, common: dict[str, Any]) -> Strategy:
    """IFCA, FedPer or Ditto (``strategy.clusters``, ``personal_layers``, ``lambda``). Each keeps
    per-client or per-cluster models that a pruning mask of the one global model does not cover,
    so pruning is refused with them."""
    s = cfg.strategy
    if cfg.pruning.enabled:
        raise ConfigError(
            f"pruning.enabled prunes the one global model; strategy.name={s.name} keeps "
            "personal or cluster models beside it: turn pruning off"
        )
    if s.personal_layers and s.name != "fedper":
        raise ConfigError(
            f"strategy.personal_layers applies to fedper only, got strategy.name={s.name!r}"
        )
    if s.name == "ifca":
        return IFCA(clusters=s.clusters, **common)
    if s.name == "fedper":
        return FedPer(personal_layers=tuple(s.personal_layers), **common)
    return Ditto(ditto_lambda=s.ditto_lambda, **common)
