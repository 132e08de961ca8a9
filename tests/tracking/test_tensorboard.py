"""TensorBoard event files, read back with TensorBoard's own reader (EventAccumulator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import (
    HISTOGRAMS,
    SCALARS,
    EventAccumulator,
)

from fedloom.config import load_config
from fedloom.core.task import FIT, Result, Task
from fedloom.simulation import run
from fedloom.tracking.results import read_metrics
from fedloom.tracking.tensorboard import TensorBoardTracker, record_scalars


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0, HISTOGRAMS: 0})
    acc.Reload()
    return acc


def _f32(x: float) -> float:
    """What a scalar event holds: TensorBoard stores float32."""
    return float(np.float32(x))


def test_scalars_and_client_histograms_have_the_tags_and_values_written(tmp_path: Path) -> None:
    tracker = TensorBoardTracker(tmp_path)
    for r, losses in ((1, [0.5, 1.5, 4.0]), (2, [0.25, 0.75])):
        tracker.on_round_start(r, len(losses))
        for cid, loss in enumerate(losses):
            task = Task(FIT, r, cid)
            tracker.on_result(
                Result(task, num_examples=10 * (cid + 1), metrics={"train_loss": loss})
            )
        tracker.on_result(Result(Task(FIT, r, 9), error="RuntimeError: disk full"))
        tracker.on_round_end(
            {
                "round": r,
                "accuracy": 0.5 + r / 10,
                "status": "ok",
                "recall_per_class": [0.1, 0.2],
                "phase_seconds": {"selection": 0.125, "client_work": 2.5},
                "bytes_up": 1000 * r,
            }
        )
    tracker.close()

    acc = _events(tmp_path)
    tags = acc.Tags()
    assert sorted(tags["scalars"]) == [
        "accuracy",
        "bytes_up",
        "phase_seconds/client_work",
        "phase_seconds/selection",
    ]
    assert sorted(tags["histograms"]) == ["clients/num_examples", "clients/train_loss"]
    assert [(e.step, e.value) for e in acc.Scalars("accuracy")] == [
        (1, _f32(0.6)),
        (2, _f32(0.7)),
    ]
    assert [(e.step, e.value) for e in acc.Scalars("bytes_up")] == [(1, 1000.0), (2, 2000.0)]
    assert [e.value for e in acc.Scalars("phase_seconds/client_work")] == [2.5, 2.5]
    first, second = acc.Histograms("clients/train_loss")
    # the failed client is not in the histogram
    h = first.histogram_value
    assert (first.step, h.num, h.min, h.max, h.sum) == (1, 3, 0.5, 4.0, 6.0)
    assert h.sum_squares == 0.25 + 2.25 + 16.0
    h = second.histogram_value
    assert (second.step, h.num, h.min, h.max, h.sum) == (2, 2, 0.25, 0.75, 1.0)
    sizes = acc.Histograms("clients/num_examples")[0].histogram_value
    assert (sizes.num, sizes.min, sizes.max, sizes.sum) == (3, 10.0, 30.0, 60.0)


def test_a_run_with_tracking_tensorboard_writes_every_round_of_metrics_jsonl(
    tmp_path: Path,
) -> None:
    cfg = load_config(
        None,
        [
            "rounds=2",
            "partition.num_clients=4",
            "client.epochs=1",
            "model.hidden=[8]",
            "engine.name=sequential",
            "tracking.tensorboard=true",
        ],
    )
    run(cfg, tmp_path, quiet=True)

    records = read_metrics(tmp_path)
    acc = _events(tmp_path)
    expected = {tag for r in records for tag, _ in record_scalars(r)}
    assert {"accuracy", "loss", "train_loss", "phase_seconds/client_work"} <= expected
    assert set(acc.Tags()["scalars"]) == expected
    for tag in expected:
        want = [(r["round"], _f32(v)) for r in records for t, v in record_scalars(r) if t == tag]
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == want, tag
    hist = acc.Histograms("clients/train_loss")
    assert [(e.step, e.histogram_value.num) for e in hist] == [(1, 4.0), (2, 4.0)]
    sizes = acc.Histograms("clients/num_examples")
    assert [e.histogram_value.sum for e in sizes] == [1437.0, 1437.0]  # digits' training split
