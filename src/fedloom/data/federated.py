"""A dataset split into clients as a Config says: which training rows each simulated client holds,
which of them it keeps as its local test split, and client ``i``'s local arrays.

A simulation and a deployment client that plays partition ``i`` of a built-in dataset (the demo
client of ``fedloom client``) must hold exactly the same rows; both get them from ``load_clients``
and ``local_arrays``, so the split is defined once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedloom.config import Config
from fedloom.data.datasets import Dataset, load_dataset
from fedloom.data.partition import partition
from fedloom.errors import ConfigError

__all__ = [
    "ClientData",
    "LocalArrays",
    "load_clients",
    "load_config_dataset",
    "local_arrays",
    "partition_clients",
    "split_clients",
]

# Third seed word of the local test split, so it never shares a stream with the partition.
_TEST_SPLIT_STREAM = 7


@dataclass
class ClientData:
    """Row indices of one client's local training and test data in the dataset's training set."""

    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class LocalArrays:
    """One client's local data; ``x_test``/``y_test`` are None when it keeps no test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def split_clients(
    parts: list[np.ndarray], test_fraction: float | None, seed: int
) -> list[ClientData]:
    """Hold out ``test_fraction`` of each client's rows (at least one, if it has two or more) as its
    local test split for federated evaluation; None keeps every row for training.

    The held-out rows of client ``cid`` are drawn from a stream seeded by (seed, cid), so they do
    not depend on how many clients there are or on the order they are split in.
    """
    out = []
    for cid, rows in enumerate(parts):
        if not test_fraction or len(rows) < 2:
            out.append(ClientData(rows, rows[:0]))
            continue
        order = np.random.default_rng([seed, cid, _TEST_SPLIT_STREAM]).permutation(rows)
        n_test = max(1, math.floor(test_fraction * len(rows)))
        out.append(ClientData(np.sort(order[n_test:]), np.sort(order[:n_test])))
    return out


def partition_clients(dataset: Dataset, cfg: Config) -> list[ClientData]:
    """Partition ``dataset``'s training rows across ``cfg.partition``'s clients, each with its
    local test split when ``cfg.eval.federated`` is on.

    A natural partition of a dataset with group ids makes one client per group, whatever
    ``partition.num_clients`` says. Label-skew partitions of a regression task are refused: they
    need class labels.
    """
    p = cfg.partition
    if dataset.task == "regression" and p.kind in ("dirichlet", "shards"):
        raise ConfigError(
            f"partition.kind={p.kind!r} needs class labels, but dataset "
            f"{dataset.name!r} is a regression task; use iid, quantity or natural"
        )
    num_clients = p.num_clients
    if p.kind == "natural" and dataset.groups_train is not None:
        num_clients = len(np.unique(dataset.groups_train))  # one client per group
    parts = partition(
        p.kind,
        dataset.y_train,
        num_clients,
        seed=cfg.seed,
        alpha=p.alpha,
        shards_per_client=p.shards_per_client,
        quantity_distribution=p.quantity_distribution,
        quantity_sigma=p.quantity_sigma,
        groups=dataset.groups_train,
    )
    test_fraction = cfg.eval.client_test_fraction if cfg.eval.federated else None
    return split_clients(parts, test_fraction, cfg.seed)


def load_config_dataset(cfg: Config) -> Dataset:
    """Load ``cfg.dataset`` whole, unsplit (a deployment server's test split)."""
    d = cfg.dataset
    return load_dataset(
        d.name,
        data_dir=d.data_dir,
        test_fraction=d.test_fraction,
        seed=cfg.seed,
        path=d.path,
        target=d.target,
        group_column=d.group_column,
        seq_len=d.seq_len,
        stride=d.stride,
        max_clients=d.max_clients,
    )


def load_clients(cfg: Config) -> tuple[Dataset, list[ClientData]]:
    """Load ``cfg.dataset`` and split its training rows into clients (``partition_clients``)."""
    dataset = load_config_dataset(cfg)
    return dataset, partition_clients(dataset, cfg)


def local_arrays(dataset: Dataset, client: ClientData) -> LocalArrays:
    """The arrays of one client: its training rows, and its test rows if it keeps any."""
    x, y = dataset.x_train, dataset.y_train
    if len(client.test) == 0:
        return LocalArrays(x[client.train], y[client.train])
    return LocalArrays(x[client.train], y[client.train], x[client.test], y[client.test])
