"""FedSGD: federated gradient aggregation.

McMahan et al. 2017 (FedSGD, the baseline FedAvg is compared against); Shokri & Shmatikov 2015.

Each selected client computes the gradient of its local loss at the global model, over all of its
local data (one full-batch step), and uploads it. The server applies

    theta <- theta - eta * aggregate(g_k)

where ``aggregate`` is the ``num_examples``-weighted mean by default (this equals the gradient of the
loss on the union of the selected clients' data), or the plain sum ``sum_k g_k`` of the seed formula
with ``aggregation="sum"``. ``eta`` is the server optimiser's learning rate (``strategy.server_lr``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedloom.core.summands import SumPlan, Sums, Term
from fedloom.strategies.base import RoundContext, Strategy


@dataclass
class FedSGD(Strategy):
    aggregation: Literal["mean", "sum"] = "mean"

    name = "fedsgd"
    mode = "gradient"

    def sum_plan(self, ctx: RoundContext) -> SumPlan:
        """The example-weighted sum of the gradients (unweighted for ``aggregation="sum"``)."""
        return SumPlan((Term("gradient", ctx.spec.size, weighted=self.aggregation == "mean"),))

    def combine(self, sums: Sums, ctx: RoundContext) -> np.ndarray | None:
        if self.aggregation == "sum":
            return sums.totals[0].astype(np.float32)
        return super().combine(sums, ctx)

    def pseudo_gradient(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        return aggregate
