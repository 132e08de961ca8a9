"""The load test (bench/remote_load.py): 200 concurrent clients, one round, no update lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.deploy.helpers import REPO

pytestmark = pytest.mark.deploy


@pytest.mark.slow
def test_200_concurrent_clients_lose_no_update() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "remote_load.py"), "--clients", "200"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout[out.stdout.index("{") :])
    assert report["returned"] == 200 and report["no_update_lost"]
