"""Differential privacy: accounting with ``dp-accounting`` and the clipping pieces of DP-FedAvg."""

from fedloom.privacy.accountant import (
    AccountantName,
    GaussianRounds,
    Sampling,
    calibrate_noise_multiplier,
    dp_sgd_epsilon,
    epsilon,
    epsilon_curve,
)

__all__ = [
    "AccountantName",
    "GaussianRounds",
    "Sampling",
    "calibrate_noise_multiplier",
    "dp_sgd_epsilon",
    "epsilon",
    "epsilon_curve",
]
