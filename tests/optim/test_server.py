import logging

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.optim import (
    OptState,
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    ServerYogi,
    make_server_optimizer,
)


def test_sgd_with_momentum_hand_computed() -> None:
    opt = ServerSGD(lr=0.5, momentum=0.9)
    params = np.array([1.0, 1.0], np.float32)
    state = opt.init(params)
    params, state = opt.step(params, np.array([1.0, -2.0], np.float32), state)
    np.testing.assert_allclose(params, [0.5, 2.0])  # buf = g
    params, state = opt.step(params, np.array([1.0, -2.0], np.float32), state)
    np.testing.assert_allclose(params, [0.5 - 0.5 * 1.9, 2.0 + 0.5 * 3.8])  # buf = 0.9 g + g


def test_adam_first_step() -> None:
    opt = ServerAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=0.0)
    params = np.zeros(1, np.float32)
    params, _ = opt.step(params, np.array([2.0], np.float32), opt.init(params))
    # m = 0.2, v = 0.04 -> step = 0.1 * 0.2 / 0.2
    np.testing.assert_allclose(params, [-0.1], rtol=1e-6)


def test_an_option_the_chosen_server_optimizer_ignores_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"server_momentum=0\.9 applies to server_optimizer=sgd"):
        make_server_optimizer("adam", 0.01, momentum=0.9)
    assert make_server_optimizer("sgd", 1.0, momentum=0.9).init(np.zeros(2))["momentum"].shape == (
        2,
    )


def _two_steps(opt: ServerOptimizer, g1: float, g2: float) -> tuple[float, float, OptState]:
    params = np.zeros(1, np.float32)
    state = opt.init(params)
    params, state = opt.step(params, np.array([g1], np.float32), state)
    first = float(params[0])
    params, state = opt.step(params, np.array([g2], np.float32), state)
    return first, float(params[0]), state


def test_adagrad_accumulates_squared_pseudo_gradients() -> None:
    first, second, state = _two_steps(ServerAdagrad(lr=1.0, beta1=0.5, tau=0.0), 3.0, 4.0)
    # m = 1.5, v = 9 -> -1.5 / 3; then m = 0.75 + 2 = 2.75, v = 9 + 16 = 25 -> -2.75 / 5
    assert first == pytest.approx(-0.5)
    assert second == pytest.approx(-0.5 - 0.55)
    np.testing.assert_allclose([state["m"][0], state["v"][0], state["t"][0]], [2.75, 25.0, 2.0])


def test_yogi_grows_v_like_adam_but_shrinks_it_additively() -> None:
    first, second, state = _two_steps(ServerYogi(lr=1.0, beta1=0.5, beta2=0.75, tau=0.0), 3.0, 1.0)
    # v = 0 - 0.25 * 9 * sign(0 - 9) = 2.25, m = 1.5 -> -1.5 / 1.5
    assert first == pytest.approx(-1.0)
    # g^2 = 1 < v: v = 2.25 - 0.25 * 1 = 2.0 (Adam: 0.75 * 2.25 + 0.25 = 1.9375); m = 0.75 + 0.5
    assert state["v"][0] == pytest.approx(2.0)
    assert second == pytest.approx(-1.0 - 1.25 / np.sqrt(2.0))
    _, _, adam = _two_steps(ServerAdam(lr=1.0, beta1=0.5, beta2=0.75, tau=0.0), 3.0, 1.0)
    assert adam["v"][0] == pytest.approx(1.9375)


def test_tau_starts_v_at_tau_squared_and_damps_the_step() -> None:
    opt = ServerAdam(lr=0.1, beta1=0.5, beta2=0.75, tau=0.5)
    params = np.zeros(1, np.float32)
    state = opt.init(params)
    assert state["v"][0] == pytest.approx(0.25)  # v_{-1} = tau^2
    params, state = opt.step(params, np.array([2.0], np.float32), state)
    # m = 1, v = 0.75 * 0.25 + 0.25 * 4 = 1.1875 -> -0.1 * 1 / (sqrt(1.1875) + 0.5)
    assert state["v"][0] == pytest.approx(1.1875)
    assert params[0] == pytest.approx(-0.1 / (np.sqrt(1.1875) + 0.5))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("sgd", {"beta1": 0.8}, r"strategy\.beta1=0\.8 applies to the adaptive"),
        ("sgd", {"tau": 0.1}, r"strategy\.tau=0\.1 applies to the adaptive"),
        ("yogi", {"momentum": 0.9}, r"strategy\.server_momentum=0\.9 applies to .*yogi keeps"),
        ("adagrad", {"beta2": 0.9}, r"strategy\.beta2=0\.9 applies to server_optimizer=adam or"),
        ("lamb", {}, r"strategy\.server_optimizer='lamb': allowed 'sgd', 'adam', 'yogi'"),
    ],
)
def test_options_that_do_not_apply_name_their_key(
    name: str, options: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_server_optimizer(name, 0.1, **options)


def test_make_server_optimizer_defaults_and_options() -> None:
    assert make_server_optimizer("yogi", 0.1) == ServerYogi(0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    assert make_server_optimizer("adagrad", 0.1, beta1=0.0, tau=0.01) == ServerAdagrad(
        0.1, beta1=0.0, tau=0.01
    )
    assert make_server_optimizer("adam", 0.1, beta2=0.9) == ServerAdam(0.1, beta2=0.9)


def test_an_adaptive_optimiser_at_sgds_server_lr_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        make_server_optimizer("adam", 1.0)
    assert "server_lr=1 with server_optimizer=adam" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        make_server_optimizer("yogi", 0.1)
        make_server_optimizer("sgd", 1.0)
    assert caplog.text == ""
