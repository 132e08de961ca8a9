"""FedAvg: Federated Averaging.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas. "Communication-Efficient Learning of Deep Networks
from Decentralized Data." AISTATS 2017.

Each selected client runs ``epochs`` of minibatch SGD from the global model and returns its delta
``local - global``. The new global model is the ``num_examples``-weighted mean of client models:

    theta' = sum_k n_k theta_k / sum_k n_k = theta + mean_n(delta_k)

Written as a server optimiser step on the pseudo-gradient ``g = -mean_n(delta_k)``, plain SGD with
``server_lr = 1`` is exactly FedAvg; momentum gives FedAvgM and Adam gives FedAdam (Reddi et al. 2021)
without touching this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedloom.strategies.base import RoundContext, Strategy


@dataclass
class FedAvg(Strategy):
    name = "fedavg"
    mode = "train"

    def pseudo_gradient(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        return -aggregate
