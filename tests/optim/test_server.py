import numpy as np

from fedloom.optim import ServerAdam, ServerSGD


def test_sgd_with_momentum_hand_computed() -> None:
    opt = ServerSGD(lr=0.5, momentum=0.9)
    params = np.array([1.0, 1.0], np.float32)
    state = opt.init(params)
    params, state = opt.step(params, np.array([1.0, -2.0], np.float32), state)
    np.testing.assert_allclose(params, [0.5, 2.0])  # buf = g
    params, state = opt.step(params, np.array([1.0, -2.0], np.float32), state)
    np.testing.assert_allclose(params, [0.5 - 0.5 * 1.9, 2.0 + 0.5 * 3.8])  # buf = 0.9 g + g


def test_adam_first_step() -> None:
    opt = ServerAdam(lr=0.1, beta1=0.9, beta2=0.99, eps=0.0)
    params = np.zeros(1, np.float32)
    params, _ = opt.step(params, np.array([2.0], np.float32), opt.init(params))
    # m = 0.2, v = 0.04 -> step = 0.1 * 0.2 / 0.2
    np.testing.assert_allclose(params, [-0.1], rtol=1e-6)


def test_an_option_the_chosen_server_optimizer_ignores_is_a_config_error() -> None:
    import pytest

    from fedloom.errors import ConfigError
    from fedloom.optim import make_server_optimizer

    with pytest.raises(ConfigError, match=r"server_momentum=0\.9 applies to server_optimizer=sgd"):
        make_server_optimizer("adam", 0.01, momentum=0.9)
    assert make_server_optimizer("sgd", 1.0, momentum=0.9).init(np.zeros(2))["momentum"].shape == (
        2,
    )
