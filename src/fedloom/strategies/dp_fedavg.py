"""DP-FedAvg: user-level differential privacy for FedAvg, central or with clients clipping.

McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language Models."
ICLR 2018 (DP-FedAvg with the unweighted estimator); adaptive clipping from Andrew, Thakkar,
McMahan, Ramaswamy, "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021
(``fedloom.privacy.adaptive_clipping``).

Each round, every sampled client's update ``delta_k`` is clipped to L2 norm ``C``; the server sums
the clipped updates, adds Gaussian noise ``N(0, (z C)^2)`` to every coordinate and divides by the
**expected** number of clients ``m`` (``q N`` for Poisson sampling, the cohort size for fixed-size
sampling), so that the released average does not depend on how many clients actually took part
(a Poisson round releases its noised sum however few updates came back, even none, so
``min_fit_clients`` applies to fixed-size sampling only):

    delta = (sum_k clip_C(delta_k) + N(0, (z C)^2 I)) / m

``mechanism`` says who clips: ``central`` (the server clips what it receives; the clients are
trusted with nothing, the server with everything) or ``client`` (each client clips before
upload and the server only adds noise to the sum, so it also works when the server sees only the
sum, as under secure aggregation). Every released round is composed by the accountant
(``fedloom.privacy.accountant``) for the run's sampling; its state (the rounds accounted, the
worst sampling rate seen) and the clip norm are strategy state, checkpointed with the model.
``max_epsilon`` stops the run before the round that would exceed it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedloom.aggregators import Sum
from fedloom.core.summands import SumPlan, Term
from fedloom.core.task import Result
from fedloom.errors import ConfigError
from fedloom.privacy import AccountantName, GaussianRounds, epsilon
from fedloom.privacy.adaptive_clipping import (
    default_count_stddev,
    noised_unclipped_fraction,
    split_noise,
    update_clip_norm,
)
from fedloom.privacy.noise import gaussian_noise
from fedloom.strategies.base import RoundContext, RoundPlan, StrategyState
from fedloom.strategies.fedavg import FedAvg

log = logging.getLogger("fedloom")

ROUNDS = "privacy/rounds"
"""Strategy state: rounds released and composed by the accountant."""
POPULATION = "privacy/population"
SAMPLE = "privacy/sample"
"""Strategy state: the (population, clients per round) of the highest sampling rate accounted."""
CLIP_NORM = "privacy/clip_norm"
"""Strategy state: the clip norm of the next round."""


@dataclass
class DPFedAvg(FedAvg):
    """FedAvg with clipped, noised, unweighted aggregation and a privacy accountant."""

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

    name = "dp_fedavg"

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ConfigError(f"privacy.clip_norm must be > 0, got {self.clip_norm}")
        if self.noise_multiplier < 0:
            raise ConfigError(f"privacy.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        self._epsilons: dict[tuple[float, float, float], float] = {}

    def init_state(self, params: np.ndarray) -> StrategyState:
        return {
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
            return None
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
        return self._why() if self.mechanism == "central" else None

    def _why(self) -> str:
        return (
            f"privacy.mechanism={self.mechanism} clips each update at the server; use "
            "privacy.mechanism=client (clients clip and add their share of the noise)"
        )

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        clip_norm = float(ctx.state[CLIP_NORM])
        tasks = self.configure_fit(ctx)
        sample = self.cohort(ctx.num_clients)[1]
        expected = sample if self.sampling == "poisson" else float(len(tasks))
        if not ctx.channel.reveals_updates:
            # the clients clipped (mechanism client); the server sees only the unweighted sum
            plan = SumPlan((Term("delta", ctx.spec.size, weighted=False),))
            sums = yield from ctx.channel.sums(ctx, tasks, [ctx.model], plan)
            if sums is None or (self.sampling != "poisson" and sums.count < self.min_fit_clients):
                return None
            # the clients' noise is in the sum; the server adds what dropped clients did not
            missing = max(expected - sums.count, 0.0) / max(expected, 1e-12)
            return self._release(ctx, sums.totals[0], sums.count, 0, expected, clip_norm, missing)
        total = Sum()
        total.begin(ctx.spec.size)
        unclipped = 0

        def on_result(result: Result, vec: np.ndarray | None) -> None:
            nonlocal unclipped
            assert vec is not None
            norm = float(np.linalg.norm(vec.astype(np.float64)))
            if norm <= clip_norm:
                unclipped += 1
            if self.mechanism == "central" and norm > clip_norm:
                vec = (vec.astype(np.float64) * (clip_norm / norm)).astype(np.float32)
            total.add(vec, 1.0)

        yield from ctx.channel.individual(tasks, [ctx.model], on_result, self._why())
        if self.sampling != "poisson" and total.count < self.min_fit_clients:
            self.finish(total)  # logs why the round fails
            return None
        clipped = total.finish().astype(np.float64) if total.count else np.zeros(ctx.spec.size)
        return self._release(ctx, clipped, total.count, unclipped, expected, clip_norm)

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
        """The noised average of ``clipped_sum`` (of ``returned`` updates), accounted; the server
        adds the ``noise_share`` of the round's noise variance that the sum does not carry."""
        count_std = 0.0
        z_sum = self.noise_multiplier
        if self.adaptive:
            count_std = self.clipped_count_stddev or default_count_stddev(expected)
            z_sum = split_noise(self.noise_multiplier, count_std)
        # Poisson rounds release even an empty sum: the analysis counts every round
        clipped_sum = np.array(clipped_sum, dtype=np.float64)
        noise = gaussian_noise(ctx.spec.size + 1, 1.0, ctx.round, self.noise_seed)
        clipped_sum += math.sqrt(noise_share) * z_sum * clip_norm * noise[:-1]
        aggregate = (clipped_sum / max(expected, 1e-12)).astype(np.float32)
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
        return aggregate
