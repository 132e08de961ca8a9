"""The dashboard's web app (starlette): one page and a read-only JSON/SSE view of a results folder.

Routes, all ``GET`` (anything else is refused with 405: the page cannot change the run):

- ``/``: the page (``static/index.html``), which loads ``/static/dashboard.js`` and ``.css``;
- ``/api/state``: the run's state as JSON: ``records`` (``metrics.jsonl``), ``summary``
  (``summary.json``, once written), ``live`` (the run's ``LiveFeed`` snapshot, or the ``live.json``
  it last wrote) and ``run`` (the folder's name);
- ``/api/events``: server-sent events, one ``data:`` message with the state whenever it changes
  (checked every ``poll_s`` seconds), and a comment line every 15 s to keep proxies from closing
  the stream. A message whose round records did not change since the previous one carries
  ``records: null`` (the page keeps the ones it has): in a deployment the client table changes
  with every heartbeat, and the records of a long run should not be resent each time.

With a ``token``, every route except the static files (the package's own JavaScript and CSS)
needs it, as ``?token=...`` or an ``Authorization: Bearer ...`` header; the page passes on the
token it was opened with.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from fedloom.tracking.live import LIVE_FILE, read_live
from fedloom.tracking.results import METRICS_FILE, SUMMARY_FILE

__all__ = ["STATIC", "RunSource", "create_app"]

STATIC = Path(__file__).parent / "static"
LiveState = Callable[[], "dict[str, Any] | None"]
# The page runs only the package's own script and style, and loads nothing from elsewhere.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_KEEPALIVE_S = 15.0


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class RunSource:
    """A results folder as the dashboard reads it. ``live`` returns the running run's live state
    in process; without it the state is read from the folder's ``live.json``."""

    def __init__(self, out_dir: Path, live: LiveState | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.live = live
        self._records: list[dict[str, Any]] = []
        self._records_stamp: tuple[int, int] | None = None

    def records(self) -> list[dict[str, Any]]:
        """The complete lines of ``metrics.jsonl`` (a line being written is left for later);
        parsed again only when the file changed."""
        path = self.out_dir / METRICS_FILE
        stamp = _stamp(path)
        if stamp != self._records_stamp:
            records = []
            text = path.read_text(encoding="utf-8") if stamp is not None else ""
            for line in text.splitlines(keepends=True):
                if line.endswith("\n") and line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(record, dict):
                        records.append(record)
            self._records, self._records_stamp = records, stamp
        return self._records

    def summary(self) -> dict[str, Any] | None:
        try:
            value = json.loads((self.out_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def live_state(self) -> dict[str, Any] | None:
        return self.live() if self.live is not None else read_live(self.out_dir)

    def version(self) -> tuple[Any, ...]:
        """Changes whenever anything the page shows changes."""
        live = self.live_state()
        return (
            _stamp(self.out_dir / METRICS_FILE),
            _stamp(self.out_dir / SUMMARY_FILE),
            _stamp(self.out_dir / LIVE_FILE) if self.live is None else None,
            json.dumps({k: v for k, v in (live or {}).items() if k != "updated"}, sort_keys=True),
        )

    def records_stamp(self) -> tuple[int, int] | None:
        """Changes whenever ``metrics.jsonl`` does."""
        return _stamp(self.out_dir / METRICS_FILE)

    def state(self, with_records: bool = True) -> dict[str, Any]:
        return {
            "run": self.out_dir.resolve().name,
            "records": self.records() if with_records else None,
            "summary": self.summary(),
            "live": self.live_state(),
        }


class _TokenGate:
    """Refuses requests without the token (401), except for the package's static files."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/static/"):
            request = Request(scope)
            given = request.query_params.get("token", "")
            auth = request.headers.get("authorization", "")
            if auth.startswith("Bearer "):
                given = auth[len("Bearer ") :]
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                response = Response(
                    "this dashboard needs its token: open it as /?token=TOKEN\n",
                    status_code=401,
                    media_type="text/plain",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(source: RunSource, *, token: str | None = None, poll_s: float = 0.5) -> ASGIApp:
    """The dashboard of ``source``; with ``token``, the token is required (see the module)."""

    async def index(request: Request) -> Response:
        return FileResponse(
            STATIC / "index.html",
            headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store"},
        )

    async def state(request: Request) -> Response:
        return JSONResponse(source.state(), headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            seen: tuple[Any, ...] | None = None
            sent_records: tuple[int, int] | bool | None = False  # False: none sent yet
            quiet = 0.0
            while not await request.is_disconnected():
                version = source.version()
                if version != seen:
                    seen, quiet = version, 0.0
                    stamp = source.records_stamp()
                    state = source.state(with_records=stamp != sent_records)
                    sent_records = stamp
                    yield f"data: {json.dumps(state, allow_nan=False)}\n\n"
                elif quiet >= _KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(poll_s)
                quiet += poll_s

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/api/events", events),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
    return _TokenGate(app, token) if token else app
