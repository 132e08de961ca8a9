"""Federated algorithms, one per file."""

from fedloom.strategies.base import Exchange, RoundContext, Strategy
from fedloom.strategies.ditto import Ditto
from fedloom.strategies.fedavg import FedAvg
from fedloom.strategies.fedbuff import FedBuff
from fedloom.strategies.fednova import FedNova
from fedloom.strategies.fedper import FedPer
from fedloom.strategies.fedprox import FedProx
from fedloom.strategies.fedsgd import FedSGD
from fedloom.strategies.ifca import IFCA
from fedloom.strategies.qffl import QFFL
from fedloom.strategies.scaffold import Scaffold

__all__ = [
    "IFCA",
    "QFFL",
    "Ditto",
    "Exchange",
    "FedAvg",
    "FedBuff",
    "FedNova",
    "FedPer",
    "FedProx",
    "FedSGD",
    "RoundContext",
    "Scaffold",
    "Strategy",
]
