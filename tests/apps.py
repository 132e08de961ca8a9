"""User code for the deployment tests, written as a fedloom user would write it: an own model
(``--model tests.apps:make_model`` on the server), a client on local data around that model
(``--app tests.apps:make_client``), and an own strategy (``--strategy
tests.apps:two_stage_strategy``).

Importing this module imports ``tests.strategies.two_stage``, which registers the client half of
the two-stage protocol (the ``update_norm`` stage): a deployment client started with ``--app
tests.apps:...`` can therefore run it, and says so when it joins.

A client's partition comes from ``FEDLOOM_TEST_PARTITION=i/N``: the same rows as client ``i`` of
``N`` in ``digits_client(cfg, i, N)``, which the tests use for the in-process simulation they
compare the deployment against.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

import tests.strategies.two_stage as two_stage
from fedloom.client.local import LocalTraining
from fedloom.client.torch_client import TorchClient, dataset_client
from fedloom.config import Config
from fedloom.data import load_dataset
from fedloom.data.federated import local_arrays, partition_clients
from fedloom.strategies import Strategy
from fedloom.strategies.factory import make_strategy

DIGITS_FEATURES, DIGITS_CLASSES = 64, 10
PARTITION_ENV = "FEDLOOM_TEST_PARTITION"


class TwoLayerNet(nn.Module):
    """A small MLP for 8x8 digits, deliberately not one of fedloom's reference models: its
    parameter names (``hidden.*``, ``out.*``) show that the deployment trained this model."""

    def __init__(self, hidden: int = 24) -> None:
        super().__init__()
        self.hidden = nn.Linear(DIGITS_FEATURES, hidden)
        self.out = nn.Linear(hidden, DIGITS_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.relu(self.hidden(x)))
        return out


def make_model() -> TwoLayerNet:
    """The ``--model`` factory: the server builds the global model with it (no arguments)."""
    return TwoLayerNet()


def digits_client(cfg: Config, index: int, count: int) -> TorchClient:
    """Client ``index`` of ``count``: a fresh ``make_model()`` on its partition of the digits
    training split, split as a simulation of the config with ``count`` clients splits it (kind,
    seed, local test split), trained as its client section says. Digits whatever the config's
    dataset: the server of these tests must not be able to load the config's dataset."""
    if not 0 <= index < count:
        raise ValueError(f"partition {index}/{count}: the index must be in 0..{count - 1}")
    ds = load_dataset("digits", test_fraction=cfg.dataset.test_fraction, seed=cfg.seed)
    split = cfg.model_copy(
        update={"partition": cfg.partition.model_copy(update={"num_clients": count})}
    )
    local = local_arrays(ds, partition_clients(ds, split)[index])
    training = LocalTraining.from_config(cfg.client)
    return dataset_client(
        make_model(), ds, local, client_id=index, seed=cfg.seed, training=training
    )


def make_client(cfg: Config) -> TorchClient:
    """The ``--app`` factory: this process's partition comes from ``FEDLOOM_TEST_PARTITION``."""
    spec = os.environ.get(PARTITION_ENV, "")
    index, sep, count = spec.partition("/")
    if not sep or not index.isdigit() or not count.isdigit():
        raise ValueError(f"set {PARTITION_ENV}=i/N (this client's partition), got {spec!r}")
    return digits_client(cfg, int(index), int(count))


def two_stage_strategy(cfg: Config) -> two_stage.ClipToMedianNorm:
    """The ``--strategy`` factory: the two-stage toy protocol, with the selection, client
    training config and server optimiser the config's strategy and client sections give
    (``make_strategy`` builds those, so they match a simulation of the same config)."""
    base = make_strategy(cfg)
    shared = {f.name: getattr(base, f.name) for f in dataclasses.fields(Strategy)}
    return two_stage.ClipToMedianNorm(**shared)
