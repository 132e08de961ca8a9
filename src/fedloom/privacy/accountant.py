"""Privacy accounting for DP-FedAvg rounds and DP-SGD steps with Google's ``dp-accounting``.

One round (or step) of a sampled Gaussian mechanism is a ``DpEvent``; ``rounds`` of them compose.
The neighbouring relation follows the sampling, because the analyses do:

- Poisson sampling (each of ``population`` users independently with probability ``q``): the
  add/remove-one relation, sensitivity ``C`` of the clipped sum, noise multiplier ``z``
  (Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism");
- fixed-size sampling without replacement (``clients_per_round`` of ``population``): the
  replace-one relation (Wang, Balle, Kasiviswanathan 2019, "Subsampled Rényi Differential Privacy
  and Analytical Moments Accountant"). Replacing one user's update by another moves the clipped sum
  by up to ``2C``, so the Gaussian event the accountant sees has noise multiplier ``z / 2``;
- no sampling at all (local DP, where every client knows it took part): the plain Gaussian
  mechanism on one client's update, which any other update may replace, so sensitivity ``2C`` and
  again multiplier ``z / 2``. It is accounted as a Gaussian event of multiplier ``z / 2`` under
  add/remove, where both accountants read the multiplier as std over sensitivity (under
  replace-one ``dp-accounting``'s PLD doubles the sensitivity itself and its RDP does not).

Accountants: RDP (Mironov 2017, "Rényi Differential Privacy"), the default, and PLD (Doroshenko,
Ghazi, Kamath, Kumar, Manurangsi 2022, "Connect the Dots: Tighter Discrete Approximations of
Privacy Loss Distributions"), tighter but slower, and only for Poisson sampling (``dp-accounting``
has no PLD of sampling without replacement).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import dp_accounting as dpa
from dp_accounting import pld, rdp

from fedloom.errors import ConfigError

Sampling = Literal["poisson", "fixed", "none"]
AccountantName = Literal["rdp", "pld"]

__all__ = [
    "AccountantName",
    "GaussianRounds",
    "Sampling",
    "calibrate_noise_multiplier",
    "dp_sgd_epsilon",
    "epsilon",
    "epsilon_curve",
]


@dataclass(frozen=True)
class GaussianRounds:
    """A sampled Gaussian mechanism run round after round.

    ``population`` users, ``clients_per_round`` of them per round (the expected number for
    Poisson sampling, whose rate is ``clients_per_round / population``), Gaussian noise of
    ``noise_multiplier`` times the clip norm on the sum.
    """

    noise_multiplier: float
    population: int
    clients_per_round: float
    sampling: Sampling = "poisson"
    accountant: AccountantName = "rdp"

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ConfigError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.population < 1 or not 0 < self.clients_per_round <= self.population:
            raise ConfigError(
                f"clients_per_round must be in (0, population={self.population}], "
                f"got {self.clients_per_round}"
            )
        if self.sampling == "fixed" and self.clients_per_round != int(self.clients_per_round):
            raise ConfigError("fixed-size sampling needs a whole number of clients_per_round")
        if self.accountant == "pld" and self.sampling == "fixed":
            raise ConfigError(
                "the PLD accountant has no analysis of fixed-size sampling without replacement; "
                "use privacy.accountant=rdp or strategy.sampling=poisson"
            )

    @property
    def sampling_rate(self) -> float:
        return self.clients_per_round / self.population

    def round_event(self) -> dpa.DpEvent:
        """One round as a ``DpEvent``."""
        z = self.noise_multiplier
        if self.sampling == "poisson":
            return dpa.PoissonSampledDpEvent(self.sampling_rate, dpa.GaussianDpEvent(z))
        # replace-one: the sum moves by up to 2C (module docstring)
        gaussian = dpa.GaussianDpEvent(z / 2)
        if self.sampling == "fixed":
            return dpa.SampledWithoutReplacementDpEvent(
                self.population, int(self.clients_per_round), gaussian
            )
        return gaussian

    def new_accountant(self) -> dpa.PrivacyAccountant:
        relation = (
            dpa.NeighboringRelation.REPLACE_ONE
            if self.sampling == "fixed"
            else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        if self.accountant == "pld":
            return pld.PLDAccountant(neighboring_relation=relation)
        return rdp.RdpAccountant(neighboring_relation=relation)


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting logs a warning for every RDP order it drops as unstable (small orders at
    large sampling rates); the orders kept still bound epsilon, so the warnings are noise here."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def epsilon(mechanism: GaussianRounds, rounds: int, delta: float) -> float:
    """The epsilon of ``rounds`` rounds of ``mechanism`` at ``delta`` (0 for no rounds, infinite
    for no noise)."""
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")
    if rounds <= 0:
        return 0.0
    if mechanism.noise_multiplier == 0:
        return math.inf
    accountant = mechanism.new_accountant()
    with _quiet_absl():
        accountant.compose(mechanism.round_event(), rounds)
        return float(accountant.get_epsilon(delta))


def epsilon_curve(
    mechanism: GaussianRounds, rounds: Sequence[int], delta: float
) -> list[tuple[int, float]]:
    """``(round, epsilon)`` after each of ``rounds`` (each computed from scratch: composing a PLD
    one round at a time is slower than composing ``n`` rounds at once)."""
    return [(r, epsilon(mechanism, r, delta)) for r in rounds]


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    rounds: int,
    population: int,
    clients_per_round: float,
    sampling: Sampling = "poisson",
    accountant: AccountantName = "rdp",
) -> float:
    """The smallest noise multiplier whose ``rounds`` rounds stay within ``target_epsilon`` at
    ``delta`` (``dp_accounting.calibrate_dp_mechanism``, to a relative tolerance of 1e-4)."""
    if not target_epsilon > 0:
        raise ConfigError(f"target epsilon must be > 0, got {target_epsilon}")
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")

    def mechanism(z: float) -> GaussianRounds:
        return GaussianRounds(z, population, clients_per_round, sampling, accountant)

    def event(z: float) -> dpa.DpEvent:
        return dpa.SelfComposedDpEvent(mechanism(z).round_event(), rounds)

    with _quiet_absl():
        z = dpa.calibrate_dp_mechanism(
            mechanism(1.0).new_accountant,
            event,
            target_epsilon,
            delta,
            dpa.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-4,
        )
    return float(z)


def dp_sgd_epsilon(
    noise_multiplier: float,
    batch_size: int,
    num_examples: int,
    steps: int,
    delta: float,
    accountant: AccountantName = "rdp",
) -> float:
    """Record-level epsilon of ``steps`` DP-SGD steps on one client's ``num_examples`` examples
    (Abadi et al. 2016): the sampled Gaussian mechanism at rate ``batch_size / num_examples``,
    analysed as Poisson sampling under add/remove-one, as Opacus's accountant analyses it."""
    mechanism = GaussianRounds(noise_multiplier, num_examples, batch_size, "poisson", accountant)
    return epsilon(mechanism, steps, delta)
