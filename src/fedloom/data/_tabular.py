"""Private helpers for tabular data: train/test split, standardisation, CSV parsing, encoding."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import train_test_split

from fedloom.errors import ConfigError, DatasetError

# A target with at most this many distinct integer values is read as class ids.
MAX_INTEGER_CLASSES = 50


@dataclass(frozen=True)
class CsvTable:
    """The columns of a CSV file, split into features, target and optional group column."""

    path: Path
    feature_names: tuple[str, ...]
    features: npt.NDArray[np.float64]  # (rows, features)
    target: list[str]
    groups: list[str] | None
    line_numbers: list[int]  # the file line of each row, for error messages


def check_test_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {test_fraction}")


def split_indices(
    num_rows: int,
    test_fraction: float,
    seed: int,
    labels: npt.NDArray[np.int64] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded shuffled train/test split of ``range(num_rows)``, stratified by ``labels`` if given.

    The test set has ``ceil(test_fraction * num_rows)`` rows, as in scikit-learn. Stratification
    needs every class twice and room for every class on both sides; when a small file does not
    allow it, the split falls back to a plain shuffled one rather than failing.
    """
    check_test_fraction(test_fraction)
    num_test = math.ceil(test_fraction * num_rows)
    num_train = num_rows - num_test
    if num_train < 1 or num_test < 1:
        raise DatasetError(
            f"cannot split {num_rows} rows with test_fraction={test_fraction}: "
            f"that leaves {num_train} training and {num_test} test rows; "
            "add rows or change test_fraction"
        )
    stratify = None
    if labels is not None:
        counts = np.bincount(labels)
        counts = counts[counts > 0]
        if counts.min() >= 2 and min(num_test, num_train) >= len(counts):
            stratify = labels
    train, test = train_test_split(
        np.arange(num_rows, dtype=np.int64),
        test_size=num_test,
        random_state=seed,
        shuffle=True,
        stratify=stratify,
    )
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def standardise(
    train: npt.NDArray[Any], test: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Scale each column to zero mean and unit variance using the TRAINING rows' statistics only.

    Constant columns keep a scale of 1, so they become zero instead of NaN.
    """
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def encode_categories(values: list[str]) -> tuple[npt.NDArray[np.int64], tuple[str, ...]]:
    """Map values to ``0..K-1`` in sorted order: numeric order if all are integers, else text.

    Returns the codes and the category names (integers written canonically, e.g. ``"07"`` as
    ``"7"``).
    """
    as_ints = _parse_ints(values)
    if as_ints is not None:
        categories, codes = np.unique(np.asarray(as_ints, dtype=np.int64), return_inverse=True)
        names = tuple(str(int(value)) for value in categories)
    else:
        categories, codes = np.unique(np.asarray(values, dtype=np.str_), return_inverse=True)
        names = tuple(str(value) for value in categories)
    return codes.astype(np.int64).reshape(-1), names


def infer_task(values: list[str]) -> Literal["classification", "regression"]:
    """Classification for text labels, or integers with at most 50 distinct values.

    Integer targets with more distinct values, and any non-integer numbers, are regression. Text
    labels are classification whatever their count, since they cannot be regressed on.
    """
    as_ints = _parse_ints(values)
    if as_ints is not None:
        return "classification" if len(set(as_ints)) <= MAX_INTEGER_CLASSES else "regression"
    try:
        [float(value) for value in values]
    except ValueError:
        return "classification"
    return "regression"


def parse_floats(
    values: list[str], column: str, path: Path, line_numbers: list[int]
) -> npt.NDArray[np.float64]:
    """Parse a column of numbers, naming the column and file line of the first bad cell."""
    try:
        parsed = np.asarray(values, dtype=np.str_).astype(np.float64)
    except ValueError:
        parsed = None
    if parsed is not None and bool(np.isfinite(parsed).all()):
        return parsed
    for row, value in enumerate(values):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            shown = "an empty cell" if value == "" else repr(value)
            raise DatasetError(
                f"{path}: column {column!r} must be numeric, but line {line_numbers[row]} has "
                f"{shown}; "
                "encode text columns as numbers, fill missing values, or drop the column"
            )
    raise AssertionError("unreachable: a non-finite value must have been found")


def read_csv_table(path: Path, target: str, group_column: str | None) -> CsvTable:
    """Read a CSV file with a header row into numeric features, a target and optional groups."""
    if group_column is not None and group_column == target:
        raise ConfigError(f"data.group_column and data.target must differ, both are {target!r}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            # Blank lines are skipped, so each row remembers its line for error messages.
            numbered = [(reader.line_num, row) for row in reader if row]
    except FileNotFoundError:
        raise DatasetError(
            f"CSV file not found: {path} (resolved to {path.resolve()}); check the path"
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read CSV file {path}: {exc}") from exc
    if len(numbered) < 2:
        raise DatasetError(f"{path} needs a header row and at least one data row")
    header = [name.strip() for name in numbered[0][1]]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DatasetError(f"{path} has duplicate column names: {', '.join(duplicates)}")
    for name, role in ((target, "target"), (group_column, "group column")):
        if name is not None and name not in header:
            raise DatasetError(
                f"{path} has no {role} column {name!r}; its columns are: {', '.join(header)}"
            )
    line_numbers = [line for line, _ in numbered[1:]]
    body = [row for _, row in numbered[1:]]
    for line, row in zip(line_numbers, body, strict=True):
        if len(row) != len(header):
            raise DatasetError(
                f"{path}: line {line} has {len(row)} fields, the header has {len(header)}"
            )
    columns = {name: [row[i].strip() for row in body] for i, name in enumerate(header)}
    feature_names = tuple(name for name in header if name not in (target, group_column))
    if not feature_names:
        raise DatasetError(f"{path} has no feature columns besides the target and group column")
    for name in (target, group_column):
        if name is not None and "" in columns[name]:
            line = line_numbers[columns[name].index("")]
            raise DatasetError(f"{path}: column {name!r} is empty on line {line}; fill or drop it")
    features = np.stack(
        [parse_floats(columns[name], name, path, line_numbers) for name in feature_names], axis=1
    )
    return CsvTable(
        path=path,
        feature_names=feature_names,
        features=features,
        target=columns[target],
        groups=None if group_column is None else columns[group_column],
        line_numbers=line_numbers,
    )


def _parse_ints(values: list[str]) -> list[int] | None:
    try:
        return [int(value) for value in values]
    except ValueError:
        return None
