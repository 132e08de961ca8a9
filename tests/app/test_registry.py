"""The app kinds: ``dataset.name`` picks the kind that builds the federation."""

from __future__ import annotations

import dataclasses

import pytest

from fedloom.app import app_kind, register_app
from fedloom.config import load_config


@pytest.mark.parametrize(
    ("dataset", "kind"),
    [("digits", "supervised"), ("shakespeare", "supervised"), ("movielens", "ratings")],
)
def test_the_dataset_picks_the_app_kind(dataset: str, kind: str) -> None:
    assert app_kind(load_config(None, [f"dataset.name={dataset}"])).name == kind


def test_a_dataset_served_by_two_kinds_is_refused() -> None:
    ratings = app_kind(load_config(None, ["dataset.name=movielens"]))

    with pytest.raises(ValueError, match=r"datasets \['movielens'\] are served by app kind"):
        register_app(dataclasses.replace(ratings, name="ratings2"))
