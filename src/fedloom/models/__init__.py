"""Reference models and a registry that builds them for a dataset."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from fedloom.errors import ConfigError
from fedloom.models.char_lstm import LSTM, CharLSTM
from fedloom.models.cnn import McMahanCNN
from fedloom.models.linear import LinearModel
from fedloom.models.mlp import MLP

MODEL_NAMES = ("mlp", "cnn", "linear", "logistic", "char_lstm")


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_outputs: int,
    *,
    hidden: Sequence[int] = (64,),
) -> nn.Module:
    """A reference model for inputs of ``input_shape`` with ``num_outputs`` outputs.

    ``num_outputs`` is the number of classes, or 1 for regression. ``char_lstm`` reads sequences
    of character ids (its vocabulary is the ``num_outputs`` classes) with LSTM layers of widths
    ``hidden``: ``(256, 256)`` is LEAF's Shakespeare model.
    """
    in_features = math.prod(input_shape)
    if name == "mlp":
        return MLP(in_features, hidden, num_outputs)
    if name in ("linear", "logistic"):
        return LinearModel(in_features, num_outputs)
    if name == "char_lstm":
        if len(input_shape) != 1:
            raise ConfigError(
                f"model.name='char_lstm' needs sequences of character ids (input shape (length,)), "
                f"got input shape {tuple(input_shape)}"
            )
        return CharLSTM(num_outputs, hidden)
    if name == "cnn":
        if len(input_shape) != 3 or input_shape[1] != input_shape[2] or input_shape[1] % 4:
            raise ConfigError(
                f"model.name='cnn' needs square image inputs (channels, side, side) with side a "
                f"multiple of 4, got input shape {tuple(input_shape)}; use model.name='mlp' instead"
            )
        return McMahanCNN(input_shape[0], num_outputs, input_shape[1])
    raise ConfigError(f"model.name must be one of {list(MODEL_NAMES)}, got {name!r}")


__all__ = ["LSTM", "MLP", "MODEL_NAMES", "CharLSTM", "LinearModel", "McMahanCNN", "build_model"]
