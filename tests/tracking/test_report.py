"""``fedloom report`` on two real runs: the table's numbers, the PNG and the self-contained HTML."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from matplotlib.image import imread

from fedloom.cli.main import main
from fedloom.config import load_config
from fedloom.simulation import run
from fedloom.tracking.report import ReportError, write_report
from fedloom.tracking.results import read_metrics

BASE = [
    "rounds=2",
    "partition.num_clients=4",
    "client.epochs=1",
    "model.hidden=[8]",
    "engine.name=sequential",
]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    run(load_config(None, BASE), root / "float32", quiet=True)
    run(load_config(None, [*BASE, "transport.upload=[float16]"]), root / "float16", quiet=True)
    return root / "float32", root / "float16"


def test_the_table_holds_each_runs_final_metrics_bytes_and_time(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out

    with (out / "report.csv").open(encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [row["run"] for row in table] == ["float32", "float16"]
    for row, folder in zip(table, two_runs, strict=True):
        records = read_metrics(folder)
        summary = json.loads((folder / "summary.json").read_text())
        assert int(row["rounds"]) == 2
        assert float(row["accuracy"]) == records[-1]["accuracy"]
        assert float(row["loss"]) == records[-1]["loss"]
        assert float(row["train_loss"]) == records[-1]["train_loss"]
        assert int(row["bytes_up"]) == sum(r["bytes_up"] for r in records)
        assert int(row["bytes_down"]) == sum(r["bytes_down"] for r in records)
        assert int(row["bytes_total"]) == int(row["bytes_up"]) + int(row["bytes_down"])
        assert float(row["wall_seconds"]) == summary["wall_seconds"]
        assert not (folder / "live.json").exists()  # only a run with --dashboard writes it
    # hand-computed: 4 clients x 2 rounds upload the 64-8-10 MLP (610 parameters), 4 bytes each
    # as float32 and 2 as float16; the downlink is float32 in both runs
    params = 64 * 8 + 8 + 8 * 10 + 10
    assert [int(row["bytes_up"]) for row in table] == [8 * 4 * params, 8 * 2 * params]
    assert [int(row["bytes_down"]) for row in table] == [8 * 4 * params] * 2


def test_png_and_self_contained_html(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    _, rows = write_report(list(two_runs), tmp_path)
    image = imread(tmp_path / "report.png")
    assert image.shape[:2] == (420, 1100)
    assert image[..., :3].std() > 0.05  # axes and lines, not a blank canvas

    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and "<link" not in page and "url(" not in page
    sources = re.findall(r"""(?:src|href)=['"]([^'"]*)""", page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    for row in rows:
        assert f"<td>{row['run']}</td>" in page
        assert f"<td>{row['accuracy']:.4f}</td>" in page


def test_a_folder_without_metrics_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"empty is not a results folder: it has no metrics"):
        write_report([tmp_path / "empty"], tmp_path / "out")
