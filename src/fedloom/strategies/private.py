"""Differential privacy around any sum-based strategy: DP-FedAvg's clipped, noised, unweighted
sum, made a wrapper (``with_privacy``), with the accountant beside it.

McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language Models."
ICLR 2018 (DP-FedAvg with the unweighted estimator); adaptive clipping from Andrew, Thakkar,
McMahan, Ramaswamy, "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021
(``fedloom.privacy.adaptive_clipping``).

A strategy asks its round's channel for sums (``strategies.channel``, ``core.summands``). Wrapped,
its channel is wrapped too (``PrivateSums``): every term becomes unweighted, each client's
contribution, **all terms together** (SCAFFOLD's model delta and control delta as one vector), is
clipped to L2 norm ``C``; the sums get Gaussian noise ``N(0, (z C)^2)`` on every value and are
divided by the **expected** number of clients ``m`` (``q N`` for Poisson sampling, the cohort size
for fixed-size sampling), so that the released averages do not depend on how many clients took
part (a Poisson round releases its noised sums however few updates came back, even none, so
``min_fit_clients`` applies to fixed-size sampling only):

    mean_j = (sum_k clip_C(x_k)_j + N(0, (z C)^2 I)) / m

The strategy then combines the released means as it would any others (post-processing).
``mechanism`` says who clips: ``central`` (the server clips what it receives; the clients are
trusted with nothing, the server with everything) or ``client`` (each client clips before upload
and the server only adds noise to the sum, so it also works when the server sees only the sum, as
under secure aggregation, where each client adds its share ``N(0, (z C)^2 / m)``). Every released
round is composed by the accountant (``fedloom.privacy.accountant``) for the run's sampling; its
state (the rounds accounted, the worst sampling rate seen) and the clip norm are strategy state,
checkpointed with the model. ``max_epsilon`` stops the run before the round that would exceed it.

A strategy whose sums are not bounded by the clip (FedNova's work, q-FFL's loss-scaled terms),
that releases something data-dependent beside them (IFCA's cluster choices) or that needs the
individual updates says so in ``private_refusal`` and cannot be wrapped.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from fedloom.aggregators import Aggregator, WeightedMean
from fedloom.core.summands import SumPlan, Sums, Term
from fedloom.core.task import Blob, Task
from fedloom.errors import ConfigError
from fedloom.privacy import AccountantName, GaussianRounds, epsilon
from fedloom.privacy.adaptive_clipping import (
    default_count_stddev,
    noised_unclipped_fraction,
    split_noise,
    update_clip_norm,
)
from fedloom.privacy.noise import gaussian_noise
from fedloom.strategies.base import (
    Exchange,
    OnResult,
    RoundContext,
    RoundPlan,
    Strategy,
    StrategyState,
)
from fedloom.strategies.channel import Channel, SumsPlan

log = logging.getLogger("fedloom")

ROUNDS = "privacy/rounds"
"""Strategy state: rounds released and composed by the accountant."""
POPULATION = "privacy/population"
SAMPLE = "privacy/sample"
"""Strategy state: the (population, clients per round) of the highest sampling rate accounted."""
CLIP_NORM = "privacy/clip_norm"
"""Strategy state: the clip norm of the next round."""


@dataclass
class Private(Strategy):
    """The privacy half of a wrapped strategy (``with_privacy``): put first among the bases, it
    takes the strategy's fit rounds through ``PrivateSums`` and adds its state, config and stop
    rule to the strategy's."""

    mechanism: Literal["central", "client"] = "central"
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clipped_count_stddev: float | None = None
    accountant: AccountantName = "rdp"
    max_epsilon: float | None = None
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        inner = getattr(super(), "__post_init__", None)
        if inner is not None:
            inner()
        if not self.clip_norm > 0:
            raise ConfigError(f"privacy.clip_norm must be > 0, got {self.clip_norm}")
        if self.noise_multiplier < 0:
            raise ConfigError(f"privacy.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        self._epsilons: dict[tuple[float, float, float], float] = {}

    def init_state(self, params: np.ndarray) -> StrategyState:
        return {
            **super().init_state(params),
            ROUNDS: np.array(0.0),
            POPULATION: np.array(0.0),
            SAMPLE: np.array(0.0),
            CLIP_NORM: np.array(float(self.clip_norm)),
        }

    # -- accounting ----------------------------------------------------------------------------

    def cohort(self, num_clients: int) -> tuple[float, float]:
        """(population, expected clients per round) when selecting from ``num_clients``."""
        if self.sampling == "poisson":
            return float(num_clients), self.fraction_fit * num_clients
        k = max(self.min_fit_clients, math.ceil(self.fraction_fit * num_clients - 1e-9))
        return float(num_clients), float(min(num_clients, k))

    def _accounted(self, state: StrategyState, num_clients: int) -> tuple[float, float]:
        """The (population, clients) to account every round at: the highest rate so far."""
        population, sample = self.cohort(num_clients)
        old_population, old_sample = float(state[POPULATION]), float(state[SAMPLE])
        if old_population > 0 and old_sample / old_population >= sample / population:
            return old_population, old_sample
        return population, sample

    def epsilon_after(self, rounds: float, population: float, sample: float) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds at ``sample`` of ``population``."""
        if rounds <= 0:
            return 0.0
        key = (rounds, population, sample)
        if key not in self._epsilons:
            mechanism = GaussianRounds(
                self.noise_multiplier,
                int(population),
                sample if self.sampling == "poisson" else int(sample),
                "poisson" if self.sampling == "poisson" else "fixed",
                self.accountant,
            )
            self._epsilons[key] = epsilon(mechanism, int(rounds), self.delta)
        return self._epsilons[key]

    def stop_reason(self, state: StrategyState, num_clients: int) -> str | None:
        if self.max_epsilon is None or num_clients == 0:
            return super().stop_reason(state, num_clients)
        population, sample = self._accounted(state, num_clients)
        rounds = float(state[ROUNDS]) + 1
        eps = self.epsilon_after(rounds, population, sample)
        if eps <= self.max_epsilon:
            return None
        return (
            f"round {int(rounds)} would bring epsilon to {eps:.4f} at delta {self.delta:g}, over "
            f"privacy.max_epsilon={self.max_epsilon:g}; the final model is the last one within "
            "the budget"
        )

    # -- the round -----------------------------------------------------------------------------

    def fit_config(self, ctx: RoundContext) -> dict[str, Any]:
        config = super().fit_config(ctx)
        if self.mechanism == "client":
            clip_norm = float(ctx.state[CLIP_NORM])
            pipeline: list[dict[str, Any]] = [{"name": "clip", "max_norm": clip_norm}]
            if not ctx.channel.reveals_updates:
                # Distributed noise: each of the m expected clients adds N(0, (z C)^2 / m), so
                # the sum the server unmasks already carries the round's noise.
                m = max(self.cohort(ctx.num_clients)[1], 1.0)
                std = self.noise_multiplier * clip_norm / math.sqrt(m)
                pipeline.append({"name": "gaussian_noise", "std": std})
            config["transforms"] = [*pipeline, *config.get("transforms", [])]
        return config

    def individual_reason(self) -> str | None:
        return self._why() if self.mechanism == "central" else super().individual_reason()

    def _why(self) -> str:
        return (
            f"privacy.mechanism={self.mechanism} clips each update at the server; use "
            "privacy.mechanism=client (clients clip and add their share of the noise)"
        )

    def enough(self, sums: Sums | None) -> bool:
        # a Poisson round releases its noised sums however few clients took part
        if sums is not None and self.sampling == "poisson":
            return True
        return super().enough(sums)

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        """The wrapped strategy's round, its channel wrapped in ``PrivateSums``."""
        channel = ctx.channel
        ctx.channel = PrivateSums(channel, self)
        try:
            return (yield from super().fit_round(ctx))
        finally:
            ctx.channel = channel

    def _release(
        self,
        ctx: RoundContext,
        clipped_sum: np.ndarray,
        returned: int,
        unclipped: int,
        expected: float,
        clip_norm: float,
        noise_share: float = 1.0,
    ) -> np.ndarray:
        """``clipped_sum`` (of ``returned`` contributions) noised, accounted; the server adds the
        ``noise_share`` of the round's noise variance that the sum does not carry."""
        count_std = 0.0
        z_sum = self.noise_multiplier
        if self.adaptive:
            count_std = self.clipped_count_stddev or default_count_stddev(expected)
            z_sum = split_noise(self.noise_multiplier, count_std)
        # Poisson rounds release even an empty sum: the analysis counts every round
        clipped_sum = np.array(clipped_sum, dtype=np.float64)
        noise = gaussian_noise(clipped_sum.shape[0] + 1, 1.0, ctx.round, self.noise_seed)
        clipped_sum += math.sqrt(noise_share) * z_sum * clip_norm * noise[:-1]
        if self.adaptive:
            fraction = noised_unclipped_fraction(
                unclipped, returned, expected, count_std * float(noise[-1])
            )
            new_clip = update_clip_norm(clip_norm, fraction, self.target_quantile, self.clip_lr)
            ctx.state[CLIP_NORM] = np.array(new_clip)
        else:
            # the trusted server's exact count: a diagnostic, not a private release
            fraction = unclipped / returned if returned else 1.0
        pop, smp = self._accounted(ctx.state, ctx.num_clients)
        ctx.state[POPULATION], ctx.state[SAMPLE] = np.array(pop), np.array(smp)
        ctx.state[ROUNDS] = np.array(float(ctx.state[ROUNDS]) + 1)
        ctx.metrics.update(
            epsilon=self.epsilon_after(float(ctx.state[ROUNDS]), pop, smp),
            delta=self.delta,
            clip_norm=clip_norm,
        )
        if self.mechanism == "central":
            ctx.metrics["unclipped_fraction"] = fraction
        return clipped_sum


class PrivateSums(Channel):
    """A round's channel with differential privacy around it: unweighted terms, each client's
    contribution clipped to the round's clip norm, noise on the sums, means over the expected
    number of clients (see the module docstring)."""

    def __init__(self, inner: Channel, private: Private) -> None:
        self.inner, self.private = inner, private
        self.name = f"private({inner.name})"
        self.reveals_updates = inner.reveals_updates

    def sums(
        self,
        ctx: RoundContext,
        tasks: Sequence[Task],
        blobs: Sequence[Blob],
        plan: SumPlan,
        aggregator: Aggregator | None = None,
        options: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> SumsPlan:
        p = self.private
        if aggregator is not None and not isinstance(aggregator, WeightedMean):
            raise ConfigError(
                "privacy: a robust aggregator combines individual updates; differential privacy "
                "calibrates its noise to a sum of clipped ones: use strategy.aggregator=mean"
            )
        clip_norm = float(ctx.state[CLIP_NORM])
        sample = p.cohort(ctx.num_clients)[1]
        expected = sample if p.sampling == "poisson" else float(len(tasks))
        private = SumPlan(
            tuple(Term(t.name, t.size, False, t.unit) for t in plan.terms),
            plan.rule,
            plan.options,
            clip=clip_norm,
        )
        sums = yield from self.inner.sums(ctx, tasks, blobs, private, None, options)
        if sums is None:
            return None
        if p.sampling != "poisson" and sums.count < p.min_fit_clients:
            return sums  # the strategy's ``enough`` logs why the round fails
        flat = np.concatenate(sums.totals)
        if self.inner.reveals_updates:
            # the clipped sum as the float32 aggregate it was before noise (DP-FedAvg's)
            flat = flat.astype(np.float32).astype(np.float64)
            unclipped = round(float(sums.extra[0])) if sums.extra.size else 0
            noise_share = 1.0
        else:
            # the clients' noise is in the sum; the server adds what dropped clients did not
            unclipped = 0
            noise_share = max(expected - sums.count, 0.0) / max(expected, 1e-12)
        noised = p._release(ctx, flat, sums.count, unclipped, expected, clip_norm, noise_share)
        bounds = np.cumsum([0, *(t.size for t in plan.terms)])
        totals = [noised[a:b] for a, b in itertools.pairwise(bounds)]
        weights = np.full(len(plan.terms), max(expected, 1e-12))
        return Sums(totals, weights, sums.count)

    def individual(
        self,
        tasks: Sequence[Task],
        blobs: Sequence[Blob],
        on_result: OnResult,
        why: str,
        until: int | None = None,
    ) -> Generator[Exchange, None, Exchange]:
        raise ConfigError(
            f"privacy: {why}; differential privacy calibrates its noise to a sum of clipped updates"
        )
        yield  # pragma: no cover  (a generator, like the plain channel's)


def with_privacy(strategy: Strategy, **settings: Any) -> Strategy:
    """``strategy`` with differential privacy around its sums (``Private``'s fields as
    ``settings``); ``ConfigError`` when the strategy cannot be wrapped, with the reason."""
    reason = strategy.private_refusal()
    if reason is not None:
        raise ConfigError(f"privacy.mechanism: {reason}")
    base = type(strategy)
    wrapped = _WRAPPED.get(base)
    if wrapped is None:
        wrapped = dataclass(type(f"Private{base.__name__}", (Private, base), {}))
        _WRAPPED[base] = wrapped
    values = {f.name: getattr(strategy, f.name) for f in fields(strategy) if f.init}
    return wrapped(**values, **settings)


_WRAPPED: dict[type[Strategy], type[Strategy]] = {}
