"""`fedloom run` end to end in a real subprocess: outputs, bad input, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedloom.cli.main import main


def _fedloom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedloom.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_run_writes_every_result_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _fedloom(
        "run",
        "--set",
        "rounds=2",
        "--set",
        "partition.num_clients=10",
        "--set",
        "model.hidden=[32,16]",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["config"]["model"]["hidden"] == [32, 16]
    for key in ("accuracy", "loss", "f1_macro", "precision_macro", "recall_macro"):
        assert 0 <= summary["final"][key] <= (1 if key != "loss" else 10)
    assert summary["bytes_down"] > 0 and summary["bytes_up"] > 0 and summary["wall_seconds"] > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2]
    # 10 clients download and upload float32 params: (64*32+32 + 32*16+16 + 16*10+10) * 4 bytes
    n_params = 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert lines[0]["bytes_down"] == lines[0]["bytes_up"] == 10 * 4 * n_params
    assert {"accuracy", "loss", "f1_macro", "seconds"} <= set(lines[0])
    assert (out / "model.safetensors").stat().st_size > 4 * n_params
    assert (out / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("strategy.fraction_fit=1.5", "strategy.fraction_fit: got 1.5"),
        (
            "strategy.name=fedx",
            "allowed: 'fedavg', 'fedsgd', 'fedprox', 'scaffold', 'fednova', 'qffl', 'fedbuff', "
            "'ifca', 'fedper' or 'ditto'",
        ),
        ("strategy.aggregation=sum", "strategy.aggregation='sum' applies to fedsgd only"),
        ("client.epochs=0", "client.epochs: got 0"),
        ("clinet.epochs=2", "clinet: unknown key"),
        ("rounds", "--set expects key=value"),
    ],
)
def test_bad_config_exits_nonzero_naming_the_field(
    override: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "unused"
    assert main(["run", "--set", override, "--out", str(out)]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()  # refused before anything ran


def test_missing_dataset_says_how_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "run",
                "--set",
                "dataset.name=mnist",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "DatasetError" in err and "--data-dir" in err


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "nope.yaml"]) == 2
    assert "config file 'nope.yaml' does not exist" in capsys.readouterr().err


def test_config_file_with_overrides(tmp_path: Path) -> None:
    from fedloom.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("rounds: 7\nclient: {epochs: 2}\n")
    cfg = load_config(path, ["client.lr=0.1", "model.hidden=[8, 8]"])
    assert (cfg.rounds, cfg.client.epochs, cfg.client.lr, cfg.model.hidden) == (7, 2, 0.1, [8, 8])


def test_partition_command_prints_label_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["partition", "--set", "partition.kind=shards", "--set", "partition.num_clients=5"])
        == 0
    )
    assert "client" in capsys.readouterr().out.lower()
