"""The strategy interface: selection, per-client config, aggregation, and the server optimiser.

A strategy turns the aggregate of client updates into a pseudo-gradient (Reddi et al. 2021) that the
server optimiser applies. New algorithms subclass ``Strategy`` in one file and override only what
differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedloom.aggregators import Aggregator, WeightedMean
from fedloom.core.task import EVALUATE, FIT, Task
from fedloom.optim import ServerOptimizer, ServerSGD
from fedloom.server.selection import sample_clients


@dataclass
class Strategy(ABC):
    """Shared machinery; subclasses set ``mode`` and ``pseudo_gradient``."""

    fraction_fit: float = 1.0
    min_fit_clients: int = 1
    fraction_evaluate: float = 1.0
    client_config: Mapping[str, Any] = field(default_factory=dict)
    server_optimizer: ServerOptimizer = field(default_factory=ServerSGD)

    name = "strategy"
    mode = "train"

    def configure_fit(
        self, round_num: int, eligible: Sequence[int], rng: np.random.Generator, seed: int
    ) -> list[Task]:
        """Select this round's clients and give each its fit task."""
        chosen = sample_clients(eligible, self.fraction_fit, self.min_fit_clients, rng)
        config = {**self.client_config, "mode": self.mode, "round": round_num, "seed": seed}
        return [Task(FIT, round_num, cid, config) for cid in chosen]

    def configure_evaluate(
        self, round_num: int, eligible: Sequence[int], rng: np.random.Generator, seed: int
    ) -> list[Task]:
        """Select clients for federated evaluation on their local test splits."""
        chosen = sample_clients(eligible, self.fraction_evaluate, 1, rng)
        return [
            Task(EVALUATE, round_num, cid, {"round": round_num, "seed": seed}) for cid in chosen
        ]

    def aggregator(self) -> Aggregator:
        return WeightedMean(weighted=True)

    @abstractmethod
    def pseudo_gradient(self, aggregate: np.ndarray) -> np.ndarray:
        """Turn the aggregated client updates into the gradient the server optimiser steps on."""
