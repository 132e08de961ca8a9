"""Local-DP FedAvg: every client noises its own clipped update before it leaves the client.

The Gaussian mechanism applied by each client to its own update (Dwork and Roth, "The Algorithmic
Foundations of Differential Privacy", 2014, Appendix A; in federated learning e.g. Truex et al.
2020, "LDP-Fed"). A client clips its update to L2 norm ``C`` and adds ``N(0, (z C)^2)`` to every
coordinate (``transforms: [clip, gaussian_noise]``); the server sums what arrives and divides by
the expected number of clients, adding nothing. Nobody, the server included, sees an update
without noise, at the price of ``m`` times the noise of central DP in the sum.

Accounting: an update may be replaced by any other in the ball of radius ``C``, so one release is
the Gaussian mechanism at sensitivity ``2C`` (multiplier ``z / 2``), with no amplification (the
client knows it was sampled). A client's epsilon composes the rounds it took part in; the round's
reported ``epsilon`` is the largest over all clients, and ``max_epsilon`` stops the run before a
round that could take any client over it. Participation counts are strategy state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedloom.aggregators import Sum
from fedloom.core.task import Result
from fedloom.privacy import GaussianRounds, epsilon
from fedloom.strategies.base import RoundContext, RoundPlan, StrategyState
from fedloom.strategies.dp_fedavg import DPFedAvg
from fedloom.strategies.fedavg import FedAvg

PARTICIPATION = "privacy/participation"
"""Strategy state: rows ``(client id, rounds released)``, created by the first round."""


@dataclass
class LocalDPFedAvg(DPFedAvg):
    """FedAvg on locally clipped and noised updates, with per-client accounting."""

    name = "ldp_fedavg"

    def init_state(self, params: np.ndarray) -> StrategyState:
        return {}

    def client_epsilon(self, rounds: int) -> float:
        """The epsilon of a client after ``rounds`` noised releases."""
        key = (float(rounds), 0.0, 0.0)
        if key not in self._epsilons:
            mechanism = GaussianRounds(self.noise_multiplier, 1, 1, "none", self.accountant)
            self._epsilons[key] = epsilon(mechanism, rounds, self.delta)
        return self._epsilons[key]

    def stop_reason(self, state: StrategyState, num_clients: int) -> str | None:
        if self.max_epsilon is None:
            return None
        most = _most(state) + 1
        eps = self.client_epsilon(most)
        if eps <= self.max_epsilon:
            return None
        return (
            f"a client's {most}th round would bring its epsilon to {eps:.4f} at delta "
            f"{self.delta:g}, over privacy.max_epsilon={self.max_epsilon:g}; the final model is "
            "the last one within the budget"
        )

    def fit_config(self, ctx: RoundContext) -> dict[str, Any]:
        config = FedAvg.fit_config(self, ctx)  # its own clip and noise, not the central ones
        local = [
            {"name": "clip", "max_norm": float(self.clip_norm)},
            {"name": "gaussian_noise", "std": float(self.noise_multiplier * self.clip_norm)},
        ]
        config["transforms"] = [*local, *config.get("transforms", [])]
        return config

    def individual_reason(self) -> str | None:
        return self._why()

    def _why(self) -> str:
        return (
            "privacy.mechanism=local accounts each client's releases from its individual noised "
            "uploads (the noise already protects each one alone); use privacy.mechanism=client "
            "for differential privacy with secure aggregation"
        )

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        tasks = self.configure_fit(ctx)
        sample = self.cohort(ctx.num_clients)[1]
        expected = sample if self.sampling == "poisson" else float(len(tasks))
        total = Sum()
        total.begin(ctx.spec.size)
        released: list[int] = []

        def on_result(result: Result, vec: np.ndarray | None) -> None:
            assert vec is not None
            total.add(vec, 1.0)
            released.append(result.task.client_id)

        yield from ctx.channel.individual(tasks, [ctx.model], on_result, self._why())
        if self.sampling != "poisson" and total.count < self.min_fit_clients:
            self.finish(total)  # logs why the round fails
            return None
        counts = {int(c): int(n) for c, n in ctx.state.get(PARTICIPATION, np.zeros((0, 2)))}
        for cid in released:
            counts[cid] = counts.get(cid, 0) + 1
        ctx.state[PARTICIPATION] = np.array(sorted(counts.items()), dtype=np.int64).reshape(-1, 2)
        summed = total.finish().astype(np.float64) if total.count else np.zeros(ctx.spec.size)
        ctx.metrics.update(
            epsilon=self.client_epsilon(_most(ctx.state)),
            delta=self.delta,
            clip_norm=self.clip_norm,
        )
        return (summed / max(expected, 1e-12)).astype(np.float32)


def _most(state: StrategyState) -> int:
    """The most rounds any client has released."""
    table = state.get(PARTICIPATION)
    return int(table[:, 1].max()) if table is not None and len(table) else 0
