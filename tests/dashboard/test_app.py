"""The dashboard app on a real uvicorn server on 127.0.0.1: state, server-sent events, read-only
routes, the token gate, and assets that load nothing from elsewhere."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedloom.core.task import FIT, Result, Task
from fedloom.dashboard import DashboardServer, check_bind, start_dashboard
from fedloom.dashboard.app import STATIC
from fedloom.errors import ConfigError
from fedloom.tracking.live import LiveFeed, read_live

TOKEN = "s3cret-token-0123456789"


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _write(folder: Path, *records: dict[str, Any], partial: str = "") -> None:
    text = "".join(json.dumps(r) + "\n" for r in records) + partial
    (folder / "metrics.jsonl").write_text(text, encoding="utf-8")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[DashboardServer, Path]]:
    server = start_dashboard(tmp_path, port=0, poll_s=0.05)
    yield server, tmp_path
    server.stop()


def test_state_holds_the_complete_records_summary_and_live_state(
    served: tuple[DashboardServer, Path],
) -> None:
    server, folder = served
    assert server.host == "127.0.0.1"
    one = {"round": 1, "accuracy": 0.5, "bytes_up": 10}
    _write(folder, one, partial='{"round": 2, "accu')  # a line being written is left for later
    status, body = _get(server.url + "api/state")
    state = json.loads(body)
    assert status == 200
    assert (state["run"], state["records"], state["summary"], state["live"]) == (
        folder.name,
        [one],
        None,
        None,
    )
    (folder / "summary.json").write_text(json.dumps({"rounds": 1}))
    feed = LiveFeed(folder, rounds=5, mode="simulation", config={"rounds": 5}, min_interval=0)
    feed.on_round_start(2, 1)
    task = Task(FIT, 2, 7)
    feed.on_result(Result(task, num_examples=3, metrics={"train_loss": 0.25}, seconds=0.5))
    state = json.loads(_get(server.url + "api/state")[1])
    assert state["summary"] == {"rounds": 1}
    live = state["live"]
    assert (live["status"], live["round_in_progress"], live["rounds"]) == ("running", 2, 5)
    assert live["cohort"] == [
        {
            "client_id": 7,
            "kind": FIT,
            "ok": True,
            "num_examples": 3,
            "train_loss": 0.25,
            "seconds": 0.5,
            "error": None,
        }
    ]
    assert read_live(folder) == live | {"updated": read_live(folder)["updated"]}  # type: ignore[index]


def test_events_stream_the_state_again_when_a_round_is_added(
    served: tuple[DashboardServer, Path],
) -> None:
    server, folder = served
    _write(folder, {"round": 1, "loss": 2.0})
    with urllib.request.urlopen(server.url + "api/events", timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")

        def next_state() -> dict[str, Any]:
            while True:
                line = stream.readline().decode()
                if line.startswith("data: "):
                    value: dict[str, Any] = json.loads(line[len("data: ") :])
                    return value

        assert [r["round"] for r in next_state()["records"]] == [1]
        feed = LiveFeed(folder, rounds=2, mode="simulation", config={}, min_interval=0)
        feed.on_round_start(2, 3)
        # the live state changed (once or twice), the records did not: they are not sent again
        update = next_state()
        while update["live"]["round_in_progress"] is None:
            assert update["records"] is None
            update = next_state()
        assert (update["records"], update["live"]["round_in_progress"]) == (None, 2)
        _write(folder, {"round": 1, "loss": 2.0}, {"round": 2, "loss": 1.5})
        assert [r["loss"] for r in next_state()["records"]] == [2.0, 1.5]


def test_the_page_is_read_only(served: tuple[DashboardServer, Path]) -> None:
    server, _ = served
    for path in ("", "api/state", "api/events", "static/dashboard.js"):
        for method in ("POST", "PUT", "DELETE"):
            assert _get(server.url + path, method=method)[0] == 405, (method, path)


def test_the_page_and_its_assets_load_nothing_from_elsewhere(
    served: tuple[DashboardServer, Path],
) -> None:
    server, _ = served
    status, page = _get(server.url)
    assert status == 200
    request = urllib.request.Request(server.url)
    with urllib.request.urlopen(request, timeout=10) as response:
        csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    refs = re.findall(rb"""(?:src|href)=["']([^"']+)""", page)
    assert sorted(refs) == [b"static/dashboard.css", b"static/dashboard.js"]
    for name in ("dashboard.js", "dashboard.css", "index.html"):
        text = (STATIC / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
        assert _get(server.url + f"static/{name}")[0] == 200


def test_a_token_is_required_on_every_route_but_the_static_assets(tmp_path: Path) -> None:
    _write(tmp_path, {"round": 1})
    server = start_dashboard(tmp_path, port=0, token=TOKEN)
    try:
        base = f"http://127.0.0.1:{server.port}/"
        assert server.url == f"{base}?token={TOKEN}"
        for path in ("", "api/state", "api/events"):
            assert _get(base + path)[0] == 401
            assert _get(base + path + "?token=wrong-token-0123456789")[0] == 401
        assert _get(base + "api/state?token=" + TOKEN)[0] == 200
        assert _get(base + "api/state", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert _get(base + "static/dashboard.js")[0] == 200
    finally:
        server.stop()


def test_binding_beyond_the_loopback_needs_a_token() -> None:
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(ConfigError, match=r"--dashboard-host 0.0.0.0 .* --dashboard-token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        check_bind("127.0.0.1", "short")


def test_a_port_in_use_is_a_clear_error(served: tuple[DashboardServer, Path]) -> None:
    server, folder = served
    with pytest.raises(
        ConfigError, match=rf"could not listen on 127.0.0.1:{server.port}: Address already in use"
    ):
        start_dashboard(folder, port=server.port)


def test_the_cli_names_the_dashboards_default_port() -> None:
    from fedloom.cli import dashboard as cli
    from fedloom.dashboard import DEFAULT_PORT

    assert cli.DEFAULT_PORT == DEFAULT_PORT  # kept apart so `fedloom --help` loads no web server
