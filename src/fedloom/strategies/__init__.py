"""Federated algorithms, one per file."""

from fedloom.strategies.base import Strategy
from fedloom.strategies.fedavg import FedAvg
from fedloom.strategies.fedsgd import FedSGD

__all__ = ["FedAvg", "FedSGD", "Strategy"]
