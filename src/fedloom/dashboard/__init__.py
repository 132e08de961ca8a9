"""A live, local, read-only web dashboard of a run (starlette + uvicorn, server-sent events)."""

from fedloom.dashboard.app import RunSource, create_app
from fedloom.dashboard.server import DEFAULT_PORT, DashboardServer, check_bind, start_dashboard

__all__ = [
    "DEFAULT_PORT",
    "DashboardServer",
    "RunSource",
    "check_bind",
    "create_app",
    "start_dashboard",
]
