"""W&B offline and MLflow's local file store, chosen by ``tracking:`` keys, without network: what
they wrote is read back and compared with the round records."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from fedloom.config import TrackingConfig
from fedloom.tracking.trackers import open_trackers

RECORDS: list[dict[str, Any]] = [
    {"round": 1, "accuracy": 0.5, "loss": 1.25, "bytes_up": 100, "status": "ok",
     "phase_seconds": {"selection": 0.5, "client_work": 2.0}},
    {"round": 2, "accuracy": 0.75, "loss": 0.5, "bytes_up": 200, "status": "ok",
     "phase_seconds": {"selection": 0.25, "client_work": 1.5}},
]  # fmt: skip
CONFIG = {"rounds": 2, "strategy": {"name": "fedavg", "fraction_fit": 0.5}}
SCALARS = {
    "accuracy": [0.5, 0.75],
    "loss": [1.25, 0.5],
    "bytes_up": [100.0, 200.0],
    "phase_seconds/selection": [0.5, 0.25],
    "phase_seconds/client_work": [2.0, 1.5],
}


def _log(tracking: TrackingConfig, out: Path) -> None:
    with open_trackers(tracking, out, CONFIG) as trackers:
        assert len(trackers) == 1
        for record in RECORDS:
            trackers[0].on_round_end(record)


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline ``.wandb`` file: W&B's 7-byte header, then LevelDB-log
    blocks of 32 KiB, each record with a 7-byte header (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last). W&B's own Python reader of the format was removed with its Go core."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, header = 32768, 7
    records, pieces, i = [], b"", 7
    while i + header <= len(data):
        left = block - i % block
        if left < header:
            i += left
            continue
        _, length, kind = struct.unpack("<IHB", data[i : i + header])
        i += header
        if length == 0 and kind == 0:
            break
        pieces += data[i : i + length]
        i += length
        if kind in (1, 4):
            record = pb.Record()  # type: ignore[attr-defined]
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def test_wandb_offline_logs_every_scalar_at_its_round(tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason="pip install wandb")
    _log(TrackingConfig(wandb=True, project="fl-test"), tmp_path)

    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    # W&B's service process finishes writing the file after run.finish() returns (and at the
    # latest when this process exits): wait for the run's exit record.
    deadline = time.monotonic() + 60
    while True:
        records = _wandb_records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, "the offline run file was never completed"
        time.sleep(0.1)
    history: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    history.setdefault(key, []).append(
                        (r.history.step.num, json.loads(item.value_json))
                    )
    assert history == {k: [(1, v[0]), (2, v[1])] for k, v in SCALARS.items()}
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("fl-test", tmp_path.name)
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert {k: config[k] for k in CONFIG} == CONFIG


def test_mlflow_file_store_logs_every_scalar_and_the_config(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny")
    from mlflow.tracking import MlflowClient

    _log(TrackingConfig(mlflow=True, project="fl-test"), tmp_path)

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("fl-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == tmp_path.name and run.info.status == "FINISHED"
    assert run.data.params == {
        "rounds": "2",
        "strategy.name": "fedavg",
        "strategy.fraction_fit": "0.5",
    }
    assert sorted(run.data.metrics) == sorted(SCALARS)
    for key, values in SCALARS.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == [(1, values[0]), (2, values[1])], key


def test_a_failed_run_is_marked_failed_in_mlflow(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny")
    from mlflow.tracking import MlflowClient

    with (
        pytest.raises(RuntimeError, match="round 2 crashed"),
        open_trackers(TrackingConfig(mlflow=True), tmp_path, CONFIG) as trackers,
    ):
        trackers[0].on_round_end(RECORDS[0])
        raise RuntimeError("round 2 crashed")

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("fedloom")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "accuracy")] == [0.5]
