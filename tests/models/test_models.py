import pytest
import torch

from fedloom.errors import ConfigError
from fedloom.models import build_model


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mcmahan_cnn_has_the_papers_parameter_count() -> None:
    model = build_model("cnn", (1, 28, 28), 10)
    assert _count(model) == 1_663_370  # McMahan et al. 2017, Section 3
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_mlp_and_linear_shapes() -> None:
    assert _count(build_model("mlp", (64,), 10, hidden=[64])) == 64 * 64 + 64 + 64 * 10 + 10
    assert _count(build_model("logistic", (30,), 2)) == 62
    assert build_model("linear", (10,), 1)(torch.zeros(3, 10)).shape == (3, 1)


def test_cnn_on_flat_inputs_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="square image inputs"):
        build_model("cnn", (64,), 10)
