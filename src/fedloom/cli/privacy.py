"""``fedloom privacy``: the noise multiplier that meets a privacy budget, and its epsilon curve."""

from __future__ import annotations

import argparse
from typing import Any


def curve_rounds(rounds: int, points: int) -> list[int]:
    """Up to ``points`` rounds spread evenly over ``1..rounds``, the last always included."""
    step = max(1, -(-rounds // points))
    return sorted({*range(step, rounds + 1, step), rounds})


def cmd_privacy(args: argparse.Namespace) -> int:
    from fedloom.privacy import GaussianRounds, calibrate_noise_multiplier, epsilon_curve

    z = calibrate_noise_multiplier(
        args.target_epsilon,
        args.delta,
        args.rounds,
        args.population,
        args.clients_per_round,
        args.sampling,
        args.accountant,
    )
    mechanism = GaussianRounds(
        z, args.population, args.clients_per_round, args.sampling, args.accountant
    )
    rate = args.clients_per_round / args.population
    print(
        f"noise multiplier {z:.4f} for epsilon {args.target_epsilon:g} at delta {args.delta:g}: "
        f"{args.rounds} rounds, {args.sampling} sampling of {args.clients_per_round:g} of "
        f"{args.population} clients (q = {rate:.4g}), {args.accountant.upper()} accountant"
    )
    print("round  epsilon")
    for r, eps in epsilon_curve(mechanism, curve_rounds(args.rounds, args.points), args.delta):
        print(f"{r:5d}  {eps:.4f}")
    return 0


def register(sub: Any) -> None:
    """Add ``fedloom privacy`` to the command line's subparsers."""
    p = sub.add_parser(
        "privacy",
        help="calibrate the noise multiplier of DP-FedAvg to a privacy budget",
        description="Print the smallest noise multiplier whose rounds stay within the target "
        "epsilon (dp-accounting's calibration), and the epsilon after each round.",
    )
    p.add_argument("--target-epsilon", type=float, required=True)
    p.add_argument("--delta", type=float, required=True)
    p.add_argument("--clients-per-round", type=float, required=True, help="expected, for Poisson")
    p.add_argument("--population", type=int, required=True, help="clients that can be sampled")
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--sampling", choices=["poisson", "fixed"], default="poisson")
    p.add_argument("--accountant", choices=["rdp", "pld"], default="rdp")
    p.add_argument("--points", type=int, default=10, help="rounds shown in the epsilon curve")
    p.set_defaults(func=cmd_privacy)
