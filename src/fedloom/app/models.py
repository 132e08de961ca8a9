"""The model follows the dataset: ``model.name: auto`` (the default) is the dataset's reference
model, and an explicit model that cannot read the dataset's examples is a ``ConfigError`` naming
both, before anything is built.

Reference models: the char LSTM for sequences of character ids (shakespeare), the CNN for square
images (fashion_mnist, mnist), the MLP for feature vectors (digits and the tables).
``movielens`` trains a matrix factorisation (``mf``, :mod:`fedloom.app.ratings`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fedloom.config import Config
from fedloom.data import Dataset
from fedloom.errors import ConfigError
from fedloom.models import build_model

__all__ = ["dataset_model", "model_name", "recorded_config"]

AUTO = "auto"


def _is_image(input_shape: tuple[int, ...]) -> bool:
    """Square images (channels, side, side) with the side a multiple of 4, as the CNN takes."""
    return len(input_shape) == 3 and input_shape[1] == input_shape[2] and input_shape[1] % 4 == 0


def _reference(ds: Dataset) -> str:
    if ds.x_train.dtype.kind in "iu":
        return "char_lstm"
    if _is_image(ds.input_shape):
        return "cnn"
    return "mlp"


def model_name(cfg: Config, ds: Dataset) -> str:
    """The model ``cfg.model.name`` names for ``ds``: its reference model for ``auto``.

    Raises ``ConfigError`` naming the model and the dataset when the model cannot read the
    dataset's examples (a char LSTM on feature vectors, an MLP on character ids, a CNN on
    anything but square images).
    """
    name = cfg.model.name
    reference = _reference(ds)
    if name == AUTO:
        return reference
    shape = tuple(ds.input_shape)
    where = f"model.name={name} cannot train on dataset.name={cfg.dataset.name}"
    fix = f"set model.name: {reference} (or auto, the dataset's reference model)"
    if name == "char_lstm" and reference != "char_lstm":
        raise ConfigError(
            f"{where}: the char LSTM reads sequences of character ids, and the dataset holds "
            f"float features of shape {shape}; {fix}"
        )
    if name != "char_lstm" and reference == "char_lstm":
        raise ConfigError(
            f"{where}: it takes float features, and the dataset holds sequences of character ids "
            f"(integers, shape {shape}); {fix}"
        )
    if name == "cnn" and not _is_image(shape):
        raise ConfigError(
            f"{where}: the CNN takes square images (channels, side, side) with the side a "
            f"multiple of 4, and the dataset's examples have shape {shape}; {fix}"
        )
    return name


def dataset_model(cfg: Config, ds: Dataset) -> nn.Module:
    """A new model of ``cfg.model`` (``model_name``) with inputs and outputs fitted to ``ds``."""
    num_outputs = ds.num_classes if ds.task == "classification" else 1
    return build_model(model_name(cfg, ds), ds.input_shape, num_outputs, hidden=cfg.model.hidden)


def recorded_config(cfg: Config, model: str) -> dict[str, Any]:
    """``cfg`` as a run's summary records it, with the model that ``model.name: auto`` chose."""
    recorded = cfg.model_dump(mode="json")
    recorded["model"]["name"] = model
    return recorded
