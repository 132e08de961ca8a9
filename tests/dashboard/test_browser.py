"""`fedloom run --dashboard` opened in headless Chromium: the page follows the run live."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from fedloom.tracking.results import read_metrics
from tests.dashboard.browser import INSTALL, Browser, chromium_path

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason=f"chromium is not installed: {INSTALL}"),
]
REPO = Path(__file__).resolve().parents[2]
ROUNDS = 5

# Everything the test reads from the page, in one evaluation: one consistent rendering.
READ_PAGE = """JSON.stringify({
  counter: document.getElementById("round-counter").textContent,
  round: document.getElementById("round-counter").dataset.round,
  accuracy: document.querySelector('[data-metric="accuracy"]').textContent,
  loss: document.querySelector('[data-metric="loss"]').textContent,
  latest: document.getElementById("latest-title").textContent,
  points: document.getElementById("chart-quality-round").dataset.points,
  bytesPoints: document.getElementById("chart-quality-bytes").dataset.points,
  updates: document.body.dataset.updates,
  clients: document.querySelectorAll("#client-table tbody tr").length,
  status: document.getElementById("status").textContent,
})"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_text(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} from fedloom run:\n{log.read_text()}")
        time.sleep(0.1)


def test_a_live_run_shows_its_round_counter_metrics_and_curves(tmp_path: Path) -> None:
    port, out, log = _free_port(), tmp_path / "run", tmp_path / "run.log"
    args = [
        "run",
        "-q",
        *("--set", f"rounds={ROUNDS}", "--set", "partition.num_clients=10"),
        *("--set", "client.epochs=1", "--set", "model.hidden=[16]"),
        *("--out", str(out), "--dashboard", str(port)),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedloom.cli.main", *args], stdout=fh, stderr=fh, env=env
        )
    try:
        _wait_for_text(log, f"dashboard: http://127.0.0.1:{port}/", proc, 60)
        with Browser() as browser:
            browser.open(f"http://127.0.0.1:{port}/")
            browser.wait_for(
                "Number(document.getElementById('round-counter').dataset.round) >= 2 && "
                "Number(document.body.dataset.updates) >= 1",  # a server-sent event arrived
                120,
            )
            page = json.loads(browser.evaluate(READ_PAGE))
            shot = browser.screenshot(tmp_path / "dashboard.png")
        shown = int(page["round"])
        records = read_metrics(out)  # append-only: the round the page showed is in it
        record = next(r for r in records if r["round"] == shown)
        assert page["counter"] == f"round {shown} / {ROUNDS}"
        assert page["latest"] == f"Latest metrics (round {shown})"
        assert page["accuracy"] == f"{record['accuracy']:.4f}"
        assert page["loss"] == f"{record['loss']:.4f}"
        assert page["points"] == page["bytesPoints"] == str(shown)  # one point per round
        assert int(page["updates"]) >= 1
        assert page["clients"] >= 1  # the cohort of the latest round, with its train losses
        assert page["status"] in ("running", "finished")

        image = imread(shot)
        assert image.shape[:2] == (1800, 1400)
        pixels = image[..., :3].reshape(-1, 3)
        assert pixels.std() > 0.1  # not a blank page
        assert len(np.unique((pixels * 255).astype(np.uint8), axis=0)) > 50  # curves and text

        _wait_for_text(log, "run finished", proc, 120)
    finally:
        proc.send_signal(signal.SIGINT)  # the dashboard stays up after the run until Ctrl-C
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()
    assert len(read_metrics(out)) == ROUNDS


def test_the_deployment_client_table_and_the_privacy_budget_render(tmp_path: Path) -> None:
    """A results folder as a deployment with DP leaves it: records with epsilon, and the live
    state with the server's client table (``fedloom dashboard RUN_DIR`` reads both)."""
    from fedloom.dashboard import start_dashboard

    records = [
        {"round": r, "accuracy": 0.5 + r / 10, "loss": 1.0 / r, "epsilon": 0.5 * r, "delta": 1e-5}
        for r in (1, 2, 3)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    clients = [
        {"client_id": 0, "name": "site-a", "connected": True, "ready": True,
         "last_seen": time.time(), "rounds_joined": 3, "results": 3, "failures": 0,
         "dropped": 0, "rejected": 0, "last_rejection": None},
        {"client_id": 1, "name": "site-b", "connected": False, "ready": False,
         "last_seen": time.time() - 120, "rounds_joined": 2, "results": 0, "failures": 1,
         "dropped": 0, "rejected": 1, "last_rejection": "update has 3 non-finite values"},
    ]  # fmt: skip
    live = {"status": "running", "mode": "deployment", "rounds": 10, "round_in_progress": 4,
            "last_round": 3, "cohort": [], "last_cohort": [], "clients": clients,
            "config": {"rounds": 10}, "updated": time.time()}  # fmt: skip
    (tmp_path / "live.json").write_text(json.dumps(live))
    server = start_dashboard(tmp_path, port=0)
    try:
        with Browser(width=1200, height=900) as browser:
            browser.open(server.url)
            browser.wait_for("document.body.dataset.updates", 30)
            page = json.loads(
                browser.evaluate(
                    """JSON.stringify({
                    counter: document.getElementById("round-counter").textContent,
                    title: document.getElementById("clients-title").textContent,
                    rows: [...document.querySelectorAll("#client-table tbody tr")].map(
                        (tr) => [...tr.children].map((td) => td.textContent)),
                    privacyHidden: document.getElementById("privacy").hidden,
                    privacy: document.getElementById("privacy-text").textContent,
                    epsilonPoints: document.getElementById("chart-epsilon").dataset.points,
                })"""
                )
            )
    finally:
        server.stop()
    assert page["counter"] == "round 3 / 10"
    assert page["title"] == "Clients (1 connected of 2 seen)"
    assert [row[:3] + row[4:] for row in page["rows"]] == [
        ["0", "site-a", "yes", "3", "3", "0", "0", "0", ""],
        ["1", "site-b", "no", "2", "0", "1", "0", "1", "update has 3 non-finite values"],
    ]
    assert page["rows"][0][3].endswith(" s ago") and page["rows"][1][3].startswith("2.")
    assert page["rows"][1][3].endswith(" min ago")
    assert not page["privacyHidden"]
    assert page["privacy"] == "ε = 1.5000 at δ = 1.0e-5 after round 3"
    assert page["epsilonPoints"] == "3"
