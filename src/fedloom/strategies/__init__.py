"""Federated algorithms, one per file."""

from fedloom.strategies.base import Exchange, RoundContext, Strategy
from fedloom.strategies.fedavg import FedAvg
from fedloom.strategies.fedprox import FedProx
from fedloom.strategies.fedsgd import FedSGD
from fedloom.strategies.scaffold import Scaffold

__all__ = ["Exchange", "FedAvg", "FedProx", "FedSGD", "RoundContext", "Scaffold", "Strategy"]
