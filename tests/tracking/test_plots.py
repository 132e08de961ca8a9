"""plot_curves: a PNG for any sensible list of round records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedloom.tracking import plot_curves
from fedloom.tracking.plots import _series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "records",
    [
        [{"round": 1, "loss": 0.5, "accuracy": 0.8, "bytes_up": 100, "bytes_down": 200}],
        [
            {"round": 1, "loss": 0.9, "accuracy": 0.5, "fed_accuracy_mean": 0.45},
            {"round": 2},
            {"round": 3, "loss": 0.4, "accuracy": 0.8, "fed_accuracy_mean": 0.7},
        ],
        [{"round": 1, "loss": 1.0, "r2": 0.1}, {"round": 2, "loss": 0.5, "r2": 0.6}],
        [{"round": 1}],
        [],
    ],
    ids=["single", "federated-and-skipped", "regression", "nothing-evaluated", "empty"],
)
def test_writes_png(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    path = tmp_path / "sub" / "curves.png"
    plot_curves(records, path)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


def test_rounds_without_value_are_skipped_not_zero() -> None:
    records: list[dict[str, Any]] = [
        {"round": 1, "accuracy": 0.5},
        {"round": 2},
        {"round": 3, "accuracy": None},
        {"round": 4, "accuracy": float("nan")},
        {"round": 5, "accuracy": 0.0},
        {"round": 6, "accuracy": np.float32(0.75)},
    ]
    xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert _series(records, xs, "accuracy") == ([1.0, 5.0, 6.0], [0.5, 0.0, 0.75])
