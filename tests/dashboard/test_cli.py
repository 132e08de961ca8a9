"""`fedloom dashboard RUN_DIR`, and runs without `--dashboard` carry no dashboard at all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fedloom.cli.main import main

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fedloom_dashboard_serves_a_finished_run_until_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"round": 1, "accuracy": 0.75}) + "\n")
    port = _free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "fedloom.cli.main", "dashboard", str(tmp_path), "--port", str(port)],
        stderr=subprocess.PIPE,
        env=ENV,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline().decode()
            assert f"the dashboard stays at http://127.0.0.1:{port}/ until Ctrl-C" in line
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=10) as r:
                state = json.loads(r.read())
            assert state["records"] == [{"round": 1, "accuracy": 0.75}] and state["live"] is None
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
    assert code == 0


def test_a_folder_without_metrics_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dashboard", str(tmp_path), "--port", "0"]) == 2
    assert "is not a results folder: it has no metrics.jsonl" in capsys.readouterr().err


def test_binding_another_address_without_a_token_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["run", "-q", "--out", str(out), "--dashboard", "0", "--dashboard-host", "0.0.0.0"]
    assert main(argv) == 2
    assert "--dashboard-token" in capsys.readouterr().err
    assert not out.exists()


def test_the_cli_and_a_run_without_dashboard_or_trackers_import_none_of_them() -> None:
    code = (
        "import sys, fedloom.cli.main, fedloom.simulation; "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'fedloom.dashboard', 'tensorboard', "
        "'wandb', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
