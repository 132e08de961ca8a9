"""Dataset loaders: shapes, scaling, splits, CSV parsing, and the guidance in every error."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from fedloom.config import DatasetConfig
from fedloom.data import DATASET_NAMES, FASHION_MNIST_DIR, load_dataset, write_idx
from fedloom.errors import ConfigError, DatasetError

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def write_csv(path: Path, header: list[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- scikit-learn datasets ---------------------------------------------------------------------


def test_digits_shapes_range_and_stratified_split() -> None:
    ds = load_dataset("digits", test_fraction=0.2, seed=0)

    # 1,797 images; ceil(0.2 * 1797) = 360 test, 1437 train.
    assert ds.x_train.shape == (1437, 64)
    assert ds.x_test.shape == (360, 64)
    assert ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int64
    assert (ds.task, ds.num_classes, ds.input_shape) == ("classification", 10, (64,))
    assert ds.class_names == tuple("0123456789")
    assert float(ds.x_train.min()) == 0.0
    assert float(ds.x_train.max()) == 1.0
    # Pixels are counts 0..16 divided by 16.
    np.testing.assert_array_equal(ds.x_train * 16, np.round(ds.x_train * 16))
    # Stratified: every class's test count is its total times 0.2, up to rounding.
    test_counts = np.bincount(ds.y_test, minlength=10)
    totals = test_counts + np.bincount(ds.y_train, minlength=10)
    assert totals.sum() == 1797
    assert np.abs(test_counts - 0.2 * totals).max() <= 1.0


def test_same_seed_gives_identical_arrays_and_other_seed_differs() -> None:
    first = load_dataset("digits", seed=3)
    again = load_dataset("digits", seed=3)
    other = load_dataset("digits", seed=4)

    np.testing.assert_array_equal(first.x_train, again.x_train)
    np.testing.assert_array_equal(first.y_test, again.y_test)
    assert not np.array_equal(first.y_train, other.y_train)


def test_breast_cancer_is_binary_and_standardised_with_train_statistics() -> None:
    ds = load_dataset("breast_cancer")

    assert ds.x_train.shape == (455, 30)  # 569 rows, ceil(0.2 * 569) = 114 held out
    assert ds.x_test.shape == (114, 30)
    assert (ds.num_classes, ds.class_names) == (2, ("malignant", "benign"))
    assert set(np.unique(ds.y_train).tolist()) == {0, 1}
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1.0, atol=1e-4)
    # Test rows reuse the training statistics, so they are not exactly centred.
    assert np.abs(ds.x_test.mean(axis=0)).max() > 1e-3


def test_diabetes_is_standardised_regression_with_target_scale() -> None:
    ds = load_dataset("diabetes")

    assert (ds.task, ds.num_classes, ds.class_names) == ("regression", 1, ())
    assert ds.x_train.shape == (353, 10)  # 442 rows, ceil(0.2 * 442) = 89 held out
    assert ds.y_train.dtype == np.float32
    assert ds.target_scale is not None
    mean, std = ds.target_scale
    assert abs(float(ds.y_train.mean())) < 1e-5
    assert abs(float(ds.y_train.std()) - 1.0) < 1e-5
    # Undoing the scale recovers the original targets (integers from 25 to 346).
    recovered = np.concatenate([ds.y_train, ds.y_test]) * std + mean
    np.testing.assert_allclose(np.sort(recovered), np.sort(load_diabetes().target), atol=1e-3)


def test_names_are_normalised_and_unknown_names_list_the_choices() -> None:
    assert load_dataset("Digits").name == "digits"

    with pytest.raises(DatasetError, match="unknown dataset 'cifar10'; choose one of: digits, "):
        load_dataset("cifar10")
    assert DATASET_NAMES[:6] == (
        "digits",
        "breast_cancer",
        "diabetes",
        "fashion_mnist",
        "mnist",
        "csv",
    )
    # dataset.name accepts exactly the loaders' names
    assert get_args(DatasetConfig.model_fields["name"].annotation) == DATASET_NAMES


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_test_fraction_outside_unit_interval_is_a_config_error(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"test_fraction must be in \(0, 1\)"):
        load_dataset("digits", test_fraction=fraction)


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_round_trip_with_string_labels_and_group_column(tmp_path: Path) -> None:
    # 30 rows; `level` is 0, 1 or 2 and decides the label and the site, so both can be checked
    # after standardisation, which keeps the order of `level`.
    labels = ["dog", "bird", "cat"]  # sorted: bird=0, cat=1, dog=2
    sites = ["north", "east", "west"]  # sorted: east=0, north=1, west=2
    rows = [[i * 0.5, i % 3, sites[i % 3], labels[i % 3]] for i in range(30)]
    path = write_csv(tmp_path / "table.csv", ["noise", "level", "site", "animal"], rows)

    ds = load_dataset("csv", path=path, target="animal", group_column="site", seed=1)

    assert ds.task == "classification"
    assert ds.class_names == ("bird", "cat", "dog")
    assert ds.input_shape == (2,)  # site and animal are not features
    assert ds.x_train.shape == (24, 2)
    assert ds.x_test.shape == (6, 2)
    assert np.bincount(ds.y_test).tolist() == [2, 2, 2]  # stratified
    level = np.unique(ds.x_train[:, 1], return_inverse=True)[1].reshape(-1)  # 0, 1, 2 again
    np.testing.assert_array_equal(ds.y_train, np.array([2, 0, 1])[level])
    assert ds.groups_train is not None
    np.testing.assert_array_equal(ds.groups_train, np.array([1, 0, 2])[level])


def test_csv_integer_labels_are_classes_in_numeric_order(tmp_path: Path) -> None:
    rows = [[float(i), [10, 2, 7][i % 3]] for i in range(30)]
    path = write_csv(tmp_path / "ints.csv", ["x", "target"], rows)

    ds = load_dataset("csv", path=path)

    assert ds.class_names == ("2", "7", "10")
    assert ds.y_train.dtype == np.int64
    assert ds.groups_train is None


def test_csv_float_target_is_regression(tmp_path: Path) -> None:
    rows = [[float(i), 2.0 * i + 0.5] for i in range(20)]
    path = write_csv(tmp_path / "reg.csv", ["x", "y"], rows)

    ds = load_dataset("csv", path=path, target="y")

    assert (ds.task, ds.num_classes) == ("regression", 1)
    assert ds.target_scale is not None
    mean, std = ds.target_scale
    recovered = np.sort(np.concatenate([ds.y_train, ds.y_test]) * std + mean)
    np.testing.assert_allclose(recovered, 2.0 * np.arange(20) + 0.5, atol=1e-4)


def test_csv_integer_target_with_more_than_50_values_is_regression(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "many.csv", ["x", "target"], [[i, i] for i in range(51)])

    assert load_dataset("csv", path=path).task == "regression"


def test_csv_non_numeric_feature_names_the_column_and_line(tmp_path: Path) -> None:
    rows = [[1.0, "a", 0], [2.0, "b", 1], [3.0, "c", 0]]
    path = write_csv(tmp_path / "text.csv", ["x", "city", "target"], rows)

    with pytest.raises(DatasetError, match="column 'city' must be numeric, but line 2 has 'a'"):
        load_dataset("csv", path=path)


def test_csv_errors_report_the_file_line_despite_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("x,target\n1.0,0\n\n2.0,1\n,0\n")

    with pytest.raises(DatasetError, match="column 'x' must be numeric, but line 5 has an empty"):
        load_dataset("csv", path=path)


def test_csv_small_file_with_a_singleton_class_still_splits(tmp_path: Path) -> None:
    # Class 2 has one row, so a stratified split is impossible; a plain shuffled split is used.
    rows = [[float(i), 2 if i == 0 else i % 2] for i in range(10)]
    path = write_csv(tmp_path / "tiny.csv", ["x", "target"], rows)

    ds = load_dataset("csv", path=path, test_fraction=0.2)

    assert (len(ds.y_train), len(ds.y_test), ds.num_classes) == (8, 2, 3)


def test_csv_integer_groups_are_numbered_in_numeric_order(tmp_path: Path) -> None:
    # Groups 10, 9, 100 map to 1, 0, 2; with x equal to the group, order is preserved.
    rows = [[g, i % 2, g] for i, g in enumerate([10, 9, 100] * 10)]
    path = write_csv(tmp_path / "groups.csv", ["x", "target", "hospital"], rows)

    ds = load_dataset("csv", path=path, group_column="hospital")

    level = np.unique(ds.x_train[:, 0], return_inverse=True)[1].reshape(-1)
    assert ds.groups_train is not None
    np.testing.assert_array_equal(ds.groups_train, level)
    assert sorted(set(ds.groups_train.tolist())) == [0, 1, 2]


def test_csv_missing_target_lists_the_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", ["a", "b"], [[1, 2], [3, 4]])

    with pytest.raises(DatasetError, match="no target column 'label'; its columns are: a, b"):
        load_dataset("csv", path=path, target="label")


def test_csv_missing_file_says_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"

    with pytest.raises(DatasetError, match=f"CSV file not found: {missing}"):
        load_dataset("csv", path=missing)
    with pytest.raises(DatasetError, match="needs the path of a CSV file"):
        load_dataset("csv")


# --- IDX image datasets ------------------------------------------------------------------------


def test_mnist_from_a_folder_of_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1, 5], dtype=np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((2, 28, 28), 255, dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 2], dtype=np.uint8))

    ds = load_dataset("mnist", data_dir=tmp_path)

    assert ds.x_train.shape == (5, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(ds.x_train[:, 0] * np.float32(255), train_images)
    assert ds.y_train.tolist() == [3, 1, 4, 1, 5]
    assert float(ds.x_test.min()) == 1.0
    assert ds.y_test.tolist() == [9, 2]


def test_mnist_label_count_mismatch_is_reported(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(1, dtype=np.uint8))

    with pytest.raises(DatasetError, match="expected 3 uint8 labels"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_without_files_explains_how_to_get_them(tmp_path: Path) -> None:
    for data_dir in (None, tmp_path):
        with pytest.raises(DatasetError) as error:
            load_dataset("mnist", data_dir=data_dir)
        message = str(error.value)
        assert all(name in message for name in IDX_NAMES)
        assert "--data-dir" in message
        assert "apt-get install dataset-fashion-mnist" in message
    assert f"looked in {tmp_path}" in message


def test_fashion_mnist_missing_files_suggest_apt_or_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset("fashion_mnist", data_dir=tmp_path / "absent")

    message = str(error.value)
    assert "does not exist" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"{FASHION_MNIST_DIR} is absent (install: apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_official_split() -> None:
    ds = load_dataset("fashion-mnist", test_fraction=0.5)  # official split: fraction is ignored

    assert ds.x_train.shape == (60_000, 1, 28, 28)
    assert ds.x_test.shape == (10_000, 1, 28, 28)
    assert ds.x_train.dtype == np.float32
    assert (float(ds.x_train.min()), float(ds.x_train.max())) == (0.0, 1.0)
    # Fashion-MNIST is exactly balanced: 6,000 train and 1,000 test images per class.
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.class_names[0] == "T-shirt/top"
