"""Simulated attacks, so defences can be measured: a seeded, fixed set of malicious clients that
poison their data (label flipping, backdoor) or their updates (sign flipping, scaling, Gaussian
noise). Simulation only: a deployment's clients are whoever connects."""

from fedloom.attacks.data_poisoning import BACKDOOR_TARGET, poison_data, stamp_trigger
from fedloom.attacks.model_poisoning import ATTACK_KINDS, PoisonedEngine, malicious_clients

__all__ = [
    "ATTACK_KINDS",
    "BACKDOOR_TARGET",
    "PoisonedEngine",
    "malicious_clients",
    "poison_data",
    "stamp_trigger",
]
