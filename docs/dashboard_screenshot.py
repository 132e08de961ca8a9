"""Screenshot of the dashboard during a real deployment, for the README (docs/dashboard.png).

A `fedloom server --dashboard` over TLS on 127.0.0.1 with five `fedloom client` processes: three
digits clients (one of them slow, so rounds take a few seconds), one whose training crashes and
one that uploads NaNs (rejected by the server). Headless Chromium opens the dashboard once three
rounds are done and saves the page.

    python docs/dashboard_screenshot.py [OUT.png]      # needs Debian's chromium
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dashboard.browser import Browser  # noqa: E402
from tests.deploy import helpers  # noqa: E402

from fedloom.transport.certs import create_certs  # noqa: E402

ROUNDS = 12


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "dashboard.png"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        certs = tmp / "certs"
        create_certs(certs, 5)
        config = helpers.write_config(
            tmp / "config.yaml",
            rounds=ROUNDS,
            server={"min_clients": 5},
            client={"epochs": 2, "batch_size": 16},
        )
        port, dash = helpers.free_port(), helpers.free_port()
        log = tmp / "server.log"
        out = tmp / "deployment"
        procs = [
            helpers.server(config, port, certs, tmp / "state", out, log, ["--dashboard", str(dash)])
        ]
        try:
            helpers.listening(log, procs[0])
            for i in range(2):
                procs.append(
                    helpers.client(
                        port,
                        f"client-{i}",
                        certs,
                        tmp / f"client-{i}.log",
                        ["--dataset", "digits", "--partition", f"{i}/3"],
                    )
                )
            procs.append(helpers.slow_client(port, 2, 3, certs, tmp / "client-2.log", 1.5))
            procs.append(
                helpers.client(
                    port,
                    "client-3",
                    certs,
                    tmp / "client-3.log",
                    ["--app", "tests.deploy.apps:failing_client"],
                )
            )
            procs.append(
                helpers.client(
                    port,
                    "client-4",
                    certs,
                    tmp / "client-4.log",
                    ["--app", "tests.deploy.apps:poisoned_client"],
                )
            )
            deadline = time.monotonic() + 240
            while not (out / "metrics.jsonl").exists() or len(helpers.records(out)) < 3:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no third round:\n{helpers.read(log)}")
                time.sleep(0.2)
            with Browser(width=1400, height=1500) as browser:
                browser.open(f"http://127.0.0.1:{dash}/")
                browser.wait_for("Number(document.body.dataset.updates) >= 1", 30)
                browser.wait_for(
                    "document.getElementById('status').textContent === 'running' && "
                    "document.querySelectorAll('#client-table tbody tr').length === 5",
                    30,
                )
                time.sleep(1.0)
                browser.screenshot(target)
            print(f"wrote {target}")
        finally:
            procs[0].send_signal(signal.SIGINT)
            helpers.stop_all(procs)


if __name__ == "__main__":
    main()
