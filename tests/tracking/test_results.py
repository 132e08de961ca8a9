"""RunRecorder: the files of a results folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from fedloom.tracking import RunRecorder, read_metrics, to_json_safe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _strict_loads(line: str) -> Any:
    """json.loads that rejects the non-standard NaN / Infinity tokens."""

    def reject(token: str) -> None:
        raise AssertionError(f"invalid JSON token {token}")

    return json.loads(line, parse_constant=reject)


def test_creates_folder(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    RunRecorder(out)
    assert out.is_dir()


def test_log_round_writes_one_strict_json_line_per_call(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path)
    rec.log_round({"round": 1, "loss": float("nan"), "accuracy": np.float32(0.5), "f1": [0.25]})
    # Written and flushed before the next call: readable while the run goes on.
    assert read_metrics(tmp_path) == [{"round": 1, "loss": None, "accuracy": 0.5, "f1": [0.25]}]
    rec.log_round({"round": 2, "loss": float("inf"), "per_class": np.array([1.0, -np.inf])})

    lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert _strict_loads(lines[1]) == {"round": 2, "loss": None, "per_class": [1.0, None]}


def test_log_round_appends_to_existing_file(tmp_path: Path) -> None:
    RunRecorder(tmp_path).log_round({"round": 1})
    RunRecorder(tmp_path).log_round({"round": 2})
    assert [r["round"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_log_round_requires_round(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'round'"):
        RunRecorder(tmp_path).log_round({"loss": 1.0})


def test_read_metrics_reports_bad_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"round": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(tmp_path)


def test_to_json_safe_rejects_unknown_objects() -> None:
    with pytest.raises(TypeError, match="object"):
        to_json_safe({"x": object()})


def test_save_model_roundtrip_with_metadata(tmp_path: Path) -> None:
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3).T, "b": np.zeros(3, np.float32)}
    path = RunRecorder(tmp_path).save_model(params, metadata={"round": "5"})
    assert path == tmp_path / "model.safetensors"
    loaded = load_file(str(path))
    np.testing.assert_array_equal(loaded["w"], params["w"])
    np.testing.assert_array_equal(loaded["b"], params["b"])
    with safe_open(str(path), framework="numpy") as fh:
        assert fh.metadata() == {"round": "5"}


def test_write_summary(tmp_path: Path) -> None:
    path = RunRecorder(tmp_path).write_summary(
        {"rounds": 3, "accuracy": 0.75, "auc": float("nan"), "out_dir": tmp_path}
    )
    text = path.read_text(encoding="utf-8")
    assert _strict_loads(text) == {
        "accuracy": 0.75,
        "auc": None,
        "out_dir": str(tmp_path),
        "rounds": 3,
    }
    assert text.startswith('{\n  "accuracy"')  # indented, keys sorted


def test_write_curves(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path)
    rec.log_round({"round": 1, "loss": 2.0, "accuracy": 0.3, "bytes_up": 10, "bytes_down": 20})
    rec.log_round({"round": 2, "bytes_up": 10, "bytes_down": 20})  # not evaluated
    rec.log_round({"round": 3, "loss": float("nan"), "accuracy": 0.6, "bytes_up": 10})
    path = rec.write_curves()
    assert path == tmp_path / "curves.png"
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_a_new_run_keeps_the_earlier_runs_metrics_beside_its_own(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path)
    assert recorder.start_new_run() is None  # nothing there yet
    recorder.log_round({"round": 1, "accuracy": 0.5})

    first = recorder.start_new_run()
    recorder.log_round({"round": 1, "accuracy": 0.7})
    recorder.log_round({"round": 1, "accuracy": 0.9})
    second = recorder.start_new_run()

    assert first == tmp_path / "metrics.jsonl.1" and second == tmp_path / "metrics.jsonl.2"
    assert first.read_text().count("\n") == 1 and second.read_text().count("\n") == 2
    assert not recorder.metrics_path.exists()
