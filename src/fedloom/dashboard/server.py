"""Serving the dashboard: uvicorn in a background thread, bound to 127.0.0.1 unless told.

Binding any other address shows the run's config, metrics and client addresses to the network,
so it needs an explicit host and a token (``check_bind``). The page is read-only either way.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from fedloom.dashboard.app import LiveState, RunSource, create_app
from fedloom.errors import ConfigError

__all__ = ["DEFAULT_PORT", "LOOPBACK", "DashboardServer", "check_bind", "start_dashboard"]

DEFAULT_PORT = 8765
LOOPBACK = "127.0.0.1"
_LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
MIN_TOKEN_CHARS = 16


def check_bind(host: str, token: str | None) -> None:
    """``ConfigError`` unless the dashboard may bind ``host``: any address but the loopback needs
    a token of at least ``MIN_TOKEN_CHARS`` characters."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"--dashboard-token must be at least {MIN_TOKEN_CHARS} characters "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
        )
    if host not in _LOCAL_NAMES and token is None:
        raise ConfigError(
            f"--dashboard-host {host} would show the run's config, metrics and client addresses "
            "to the network; pass --dashboard-token TOKEN as well (then open "
            "http://HOST:PORT/?token=TOKEN), or leave the host at 127.0.0.1"
        )


class DashboardServer:
    """A running dashboard; ``url`` is where to open it, ``stop()`` ends it."""

    def __init__(
        self,
        server: uvicorn.Server,
        thread: threading.Thread,
        sock: socket.socket,
        token: str | None,
    ) -> None:
        self._server = server
        self._thread = thread
        self._sock = sock
        self.host, self.port = sock.getsockname()[:2]
        self.token = token

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def start_dashboard(
    out_dir: Path,
    *,
    live: LiveState | None = None,
    host: str = LOOPBACK,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    poll_s: float = 0.5,
) -> DashboardServer:
    """Serve the dashboard of the results folder ``out_dir`` on ``host:port`` (``port`` 0: any
    free port) from a daemon thread; returns once it accepts connections."""
    check_bind(host, token)
    app = create_app(RunSource(Path(out_dir), live), token=token, poll_s=poll_s)
    # Bound here, in the caller's thread, so a port in use is an error the caller sees.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own sockets
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"the dashboard could not listen on {host}:{port}: {exc.strerror} (pick another port "
            "with --dashboard PORT, or 0 for any free port)"
        ) from None
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="fedloom-dashboard", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ConfigError(f"the dashboard did not start on {host}:{port}")
        time.sleep(0.02)
    return DashboardServer(server, thread, sock, token)
