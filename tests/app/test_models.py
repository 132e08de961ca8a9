"""``model.name: auto`` picks the dataset's reference model; a model that cannot read the
dataset's examples is a ConfigError naming both, before anything is built."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.app.models import dataset_model, model_name
from fedloom.config import load_config
from fedloom.data import Dataset
from fedloom.errors import ConfigError
from fedloom.models import MLP, CharLSTM, McMahanCNN


def _dataset(name: str, x: np.ndarray) -> Dataset:
    y = np.array([0, 1], dtype=np.int64)
    return Dataset(
        name=name,
        task="classification",
        x_train=x,
        y_train=y,
        x_test=x,
        y_test=y,
        num_classes=2,
        input_shape=tuple(x.shape[1:]),
    )


CHARS = _dataset("shakespeare", np.zeros((2, 80), dtype=np.uint8))
IMAGES = _dataset("fashion_mnist", np.zeros((2, 1, 28, 28), dtype=np.float32))
FEATURES = _dataset("digits", np.zeros((2, 64), dtype=np.float32))


@pytest.mark.parametrize(
    ("ds", "name", "cls"),
    [(CHARS, "char_lstm", CharLSTM), (IMAGES, "cnn", McMahanCNN), (FEATURES, "mlp", MLP)],
)
def test_auto_is_the_reference_model_of_the_data(ds: Dataset, name: str, cls: type) -> None:
    cfg = load_config(None, [f"dataset.name={ds.name}"])

    assert cfg.model.name == "auto"
    assert model_name(cfg, ds) == name
    assert isinstance(dataset_model(cfg, ds), cls)


def test_auto_on_digits_is_todays_mlp_64_64_10() -> None:
    cfg = load_config()
    ds = _dataset("digits", np.zeros((2, 64), dtype=np.float32))

    model = dataset_model(cfg, ds)

    assert [tuple(p.shape) for p in model.parameters()] == [(64, 64), (64,), (2, 64), (2,)]


@pytest.mark.parametrize(
    ("ds", "model", "says"),
    [
        (CHARS, "mlp", "it takes float features, and the dataset holds sequences of character"),
        (CHARS, "cnn", "it takes float features, and the dataset holds sequences of character"),
        (FEATURES, "char_lstm", "the char LSTM reads sequences of character ids"),
        (FEATURES, "cnn", "the CNN takes square images"),
    ],
)
def test_a_model_that_cannot_read_the_data_is_a_config_error_naming_both(
    ds: Dataset, model: str, says: str
) -> None:
    cfg = load_config(None, [f"dataset.name={ds.name}", f"model.name={model}"])

    with pytest.raises(ConfigError) as err:
        dataset_model(cfg, ds)

    message = str(err.value)
    assert message.startswith(f"model.name={model} cannot train on dataset.name={ds.name}: ")
    assert says in message
    assert message.endswith("(or auto, the dataset's reference model)")


def test_movielens_settings_left_at_their_defaults_follow_the_dataset() -> None:
    cfg = load_config(None, ["dataset.name=movielens"])
    chosen = load_config(None, ["dataset.name=movielens", "engine.name=ray"])

    assert (cfg.model.name, cfg.partition.kind, cfg.eval.federated, cfg.engine.name) == (
        "auto",
        "natural",
        True,
        "sequential",
    )
    assert chosen.engine.name == "ray"
    with pytest.raises(ConfigError, match=r"got dataset.name='movielens', model.name='mlp'"):
        load_config(None, ["dataset.name=movielens", "model.name=mlp"])
