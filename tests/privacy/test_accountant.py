"""The accountant reproduces dp-accounting's published figures, and calibration inverts it."""

from __future__ import annotations

import math

import dp_accounting as dpa
import pytest

from fedloom.cli.main import main
from fedloom.errors import ConfigError
from fedloom.privacy import GaussianRounds, calibrate_noise_multiplier, epsilon, epsilon_curve

# The TensorFlow Federated DP tutorial's setting (EMNIST, 3,383 writers, 120 a round)
TFF = GaussianRounds(1.2, population=3383, clients_per_round=120, sampling="poisson")


def test_dp_sgd_mnist_figure() -> None:
    # Abadi et al.'s MNIST setting: q = 150/60000, z = 1.3, 6,000 steps
    steps = GaussianRounds(1.3, population=60000, clients_per_round=150, sampling="poisson")
    assert round(epsilon(steps, 6000, 1e-5), 3) == 0.724


def test_tff_tutorial_figures_rdp_and_pld() -> None:
    assert round(epsilon(TFF, 100, 1e-5), 3) == 1.986
    pld = GaussianRounds(1.2, 3383, 120, "poisson", accountant="pld")
    assert round(epsilon(pld, 100, 1e-5), 3) == 1.707


def test_fixed_size_sampling_is_replace_one_with_twice_the_sensitivity() -> None:
    fixed = GaussianRounds(1.2, 3383, 120, "fixed")
    # replace-one moves the sum by 2C: worse than add/remove at the same noise
    assert epsilon(fixed, 100, 1e-5) > epsilon(TFF, 100, 1e-5)
    # everyone every round is the plain Gaussian mechanism at z/2: RDP eps(a) = a / (2 (z/2)^2)
    everyone = GaussianRounds(4.0, 10, 10, "fixed")
    plain = GaussianRounds(4.0, 1, 1, "none")
    assert epsilon(everyone, 5, 1e-5) == pytest.approx(epsilon(plain, 5, 1e-5))


def test_no_sampling_is_the_gaussian_mechanism_at_half_the_multiplier_on_both_accountants() -> None:
    # local DP: z = 4 on an update any other may replace (sensitivity 2C) is z' = 2
    rdp = epsilon(GaussianRounds(4.0, 1, 1, "none"), 5, 1e-5)
    pld = epsilon(GaussianRounds(4.0, 1, 1, "none", accountant="pld"), 5, 1e-5)
    accountant = dpa.rdp.RdpAccountant()
    accountant.compose(dpa.GaussianDpEvent(2.0), 5)
    assert rdp == accountant.get_epsilon(1e-5)
    assert pld < rdp  # PLD is tighter
    assert pld == pytest.approx(4.983, abs=1e-3)


def test_epsilon_edges_and_curve() -> None:
    assert epsilon(TFF, 0, 1e-5) == 0.0
    assert epsilon(GaussianRounds(0.0, 10, 1), 1, 1e-5) == math.inf
    curve = epsilon_curve(TFF, [1, 50, 100], 1e-5)
    assert [r for r, _ in curve] == [1, 50, 100]
    assert curve[0][1] < curve[1][1] < curve[2][1]
    assert round(curve[2][1], 3) == 1.986


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="PLD accountant has no analysis of fixed-size"):
        GaussianRounds(1.0, 100, 10, "fixed", accountant="pld")
    with pytest.raises(ConfigError, match="clients_per_round must be in"):
        GaussianRounds(1.0, 100, 200)
    with pytest.raises(ConfigError, match="delta must be in"):
        epsilon(TFF, 1, 0.0)


def test_calibration_meets_the_target_from_python_and_the_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    z = calibrate_noise_multiplier(2.0, 1e-5, 100, 3383, 120)
    eps = epsilon(GaussianRounds(z, 3383, 120), 100, 1e-5)
    assert eps <= 2.0
    assert eps == pytest.approx(2.0, abs=2e-3)
    assert z == pytest.approx(1.196, abs=1e-3)

    args = "--target-epsilon 2 --delta 1e-5 --clients-per-round 120 --population 3383"
    assert main(["privacy", *args.split(), "--rounds", "100", "--points", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"noise multiplier {z:.4f} for epsilon 2 at delta 1e-05: 100 rounds")
    assert [line.split()[0] for line in out[2:]] == ["25", "50", "75", "100"]
    assert float(out[-1].split()[1]) == pytest.approx(eps, abs=1e-4)
