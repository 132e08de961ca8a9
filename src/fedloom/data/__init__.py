"""Data: offline datasets and the partitioners that split them across simulated clients."""

from fedloom.data.datasets import DATASET_NAMES, FASHION_MNIST_DIR, Dataset, load_dataset
from fedloom.data.idx import read_idx, write_idx
from fedloom.data.partition import (
    PARTITION_KINDS,
    dirichlet,
    format_label_distribution,
    iid,
    label_distribution,
    natural,
    partition,
    plot_label_distribution,
    quantity,
    shards,
)

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_DIR",
    "PARTITION_KINDS",
    "Dataset",
    "dirichlet",
    "format_label_distribution",
    "iid",
    "label_distribution",
    "load_dataset",
    "natural",
    "partition",
    "plot_label_distribution",
    "quantity",
    "read_idx",
    "shards",
    "write_idx",
]
