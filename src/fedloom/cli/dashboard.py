"""``--dashboard`` for ``fedloom run`` and ``fedloom server``, and ``fedloom dashboard RUN_DIR``.

Nothing here runs unless a dashboard is asked for: a run without ``--dashboard`` has no live feed
and starts no web server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TOKEN_ENV = "FEDLOOM_DASHBOARD_TOKEN"
DEFAULT_PORT = 8765  # as fedloom.dashboard.DEFAULT_PORT, without importing starlette for --help


def add_dashboard_args(p: argparse.ArgumentParser) -> None:
    """``--dashboard [PORT]``, ``--dashboard-host`` and ``--dashboard-token``."""
    p.add_argument(
        "--dashboard",
        nargs="?",
        type=int,
        const=DEFAULT_PORT,
        default=None,
        metavar="PORT",
        help=f"serve a live dashboard on http://127.0.0.1:PORT (default {DEFAULT_PORT}; 0: any "
        "free port); it stays up after the run until Ctrl-C",
    )
    _add_bind_args(p, "--dashboard-host", "--dashboard-token")


def _add_bind_args(p: argparse.ArgumentParser, host: str, token: str) -> None:
    p.add_argument(
        host,
        default="127.0.0.1",
        metavar="HOST",
        help="address the dashboard binds (default 127.0.0.1); any other needs a token",
    )
    p.add_argument(
        token,
        default=None,
        metavar="TOKEN",
        help=f"require this token (?token=TOKEN) on every page and API call; also read from "
        f"${TOKEN_ENV}; at least 16 characters",
    )


def _token(given: str | None) -> str | None:
    return given if given is not None else os.environ.get(TOKEN_ENV) or None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _serve_until_interrupted(url: str, what: str) -> None:
    _say(f"{what}; the dashboard stays at {url} until Ctrl-C")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(1.0)


@contextlib.contextmanager
def live_dashboard(
    args: argparse.Namespace, out: Path, config: dict[str, Any], *, rounds: int, mode: str
) -> Iterator[Any]:
    """Serve the dashboard of the run about to write ``out``; yields its ``LiveFeed`` (a round
    listener to give the run). The feed's status follows the run; after a finished run the
    dashboard stays up until Ctrl-C."""
    from fedloom.dashboard import check_bind, start_dashboard
    from fedloom.tracking.live import LiveFeed

    token = _token(args.dashboard_token)
    check_bind(args.dashboard_host, token)  # refused before the run starts
    feed = LiveFeed(out, rounds=rounds, mode=mode, config=config)
    server = start_dashboard(
        out, live=feed.snapshot, host=args.dashboard_host, port=args.dashboard, token=token
    )
    _say(f"dashboard: {server.url}")
    try:
        try:
            yield feed
        except KeyboardInterrupt:
            feed.set_status("interrupted")
            raise
        except BaseException:
            feed.set_status("failed")
            raise
        feed.set_status("finished")
        _serve_until_interrupted(server.url, "run finished")
    finally:
        server.stop()


def cmd_dashboard(args: argparse.Namespace) -> int:
    from fedloom.dashboard import start_dashboard
    from fedloom.errors import ConfigError
    from fedloom.tracking.results import METRICS_FILE

    run_dir = Path(args.run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a results folder: it has no {METRICS_FILE}")
    server = start_dashboard(run_dir, host=args.host, port=args.port, token=_token(args.token))
    try:
        _serve_until_interrupted(server.url, f"dashboard of {run_dir}")
    finally:
        server.stop()
    return 0


def register(sub: Any) -> None:
    """Add ``fedloom dashboard`` to ``fedloom``'s subparsers."""
    p = sub.add_parser("dashboard", help="open a run's results folder in the web dashboard")
    p.add_argument("run_dir", metavar="RUN_DIR", help="results folder (running or finished)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    _add_bind_args(p, "--host", "--token")
    p.set_defaults(func=cmd_dashboard)
