"""DP-FedAvg: user-level differential privacy for FedAvg, central or with clients clipping.

McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language Models."
ICLR 2018. FedAvg with the privacy wrapper (``strategies.private``: the clipped, noised,
unweighted sum and its accountant) around its one sum; ``with_privacy`` puts the same wrapper
around any other sum-based strategy.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedloom.strategies.fedavg import FedAvg
from fedloom.strategies.private import CLIP_NORM, POPULATION, ROUNDS, SAMPLE, Private

__all__ = ["CLIP_NORM", "POPULATION", "ROUNDS", "SAMPLE", "DPFedAvg"]


@dataclass
class DPFedAvg(Private, FedAvg):
    """FedAvg with clipped, noised, unweighted aggregation and a privacy accountant."""

    name = "dp_fedavg"
