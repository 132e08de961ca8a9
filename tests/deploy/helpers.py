"""Launch real ``fedloom server`` / ``fedloom client`` processes on 127.0.0.1 for the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"  # the deployment tests never use any other address

# Short timings so the tests finish quickly; every value is a real config key.
FAST_SERVER = {
    "round_deadline_s": 20.0,
    "heartbeat_s": 0.5,
    "heartbeat_timeout_s": 3.0,
    "poll_s": 2.0,
    "join_timeout_s": 60.0,
    "max_workers": 32,
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def write_config(path: Path, **sections: Any) -> Path:
    server = {**FAST_SERVER, **sections.pop("server", {})}
    tree = {
        "seed": 7,
        "rounds": 3,
        "partition": {"num_clients": 5},
        "model": {"name": "mlp", "hidden": [16]},
        "client": {"epochs": 1, "batch_size": 32},
        **sections,
        "server": server,
    }
    path.write_text(yaml.safe_dump(tree))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # many processes share two cores in CI
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def fedloom(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m fedloom.cli.main ARGS`` with stdout and stderr going to ``log``."""
    with log.open("ab") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "fedloom.cli.main", *args],
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**_env(), **(env or {})},
        )


def server(
    config: Path,
    port: int,
    certs: Path | None,
    state: Path,
    out: Path,
    log: Path,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    args = [
        "server",
        "--config",
        str(config),
        "--address",
        f"{HOST}:{port}",
        "--state",
        str(state),
        "--out",
        str(out),
        *extra,
    ]
    args += ["--certs", str(certs)] if certs else ["--insecure"]
    return fedloom(args, log)


def listening(log: Path, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Wait until the server listens, so clients start without climbing their backoff."""
    wait_for_line(log, "waiting for clients", timeout, proc)


def client(
    port: int,
    name: str,
    certs: Path | None,
    log: Path,
    data: Sequence[str],
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    args = [
        "client",
        "--server",
        f"{HOST}:{port}",
        "--name",
        name,
        "--give-up-after",
        "60",
        *data,
        *extra,
    ]
    args += ["--certs", str(certs)] if certs else ["--insecure"]
    return fedloom(args, log, env)


def slow_client(
    port: int,
    index: int,
    count: int,
    certs: Path,
    log: Path,
    fit_delay: float,
    rounds: Sequence[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Client ``client-{index}`` on partition ``index/count`` whose fits take at least
    ``fit_delay`` seconds longer (tests.deploy.apps:slow_client) in ``rounds`` (default: every
    round), so a kill lands mid-round. Its log says ``fit round R started`` and ``... finished``."""
    env = {"FEDLOOM_TEST_PARTITION": f"{index}/{count}", "FEDLOOM_TEST_FIT_DELAY": str(fit_delay)}
    if rounds is not None:
        env["FEDLOOM_TEST_DELAY_ROUNDS"] = ",".join(str(r) for r in rounds)
    return client(
        port, f"client-{index}", certs, log, ["--app", "tests.deploy.apps:slow_client"], env=env
    )


def app_client(
    port: int, index: int, count: int, certs: Path | None, log: Path, app: str
) -> subprocess.Popen[bytes]:
    """Client ``client-{index}`` running the user app ``app`` (``module:function``) on partition
    ``index/count`` (``FEDLOOM_TEST_PARTITION``, read by the apps in tests/apps.py)."""
    return client(
        port,
        f"client-{index}",
        certs,
        log,
        ["--app", app],
        env={"FEDLOOM_TEST_PARTITION": f"{index}/{count}"},
    )


def records(out: Path) -> list[dict[str, Any]]:
    """The round records of a results folder (metrics.jsonl), in order."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def wait_for_line(
    log: Path, text: str, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until ``text`` appears in ``log``; fail with the log if it does not in time."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {log} after {timeout} s:\n{read(log)}")


def read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else "(no log)"


def wait(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"process did not exit within {timeout} s:\n{read(log)}") from None


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()


def demo_federation(
    tmp_path: Path, certs: Path, config: Path, clients: int
) -> tuple[Path, list[int]]:
    """Run ``fedloom server`` with ``clients`` demo clients (digits, partition i of N) over TLS to
    the end; returns the server's log and the clients' exit codes. Results land in tmp_path/out."""
    port = free_port()
    server_log = tmp_path / "server.log"
    procs = [server(config, port, certs, tmp_path / "state", tmp_path / "out", server_log)]
    try:
        listening(server_log, procs[0])
        for i in range(clients):
            procs.append(
                client(
                    port,
                    f"client-{i}",
                    certs,
                    tmp_path / f"client-{i}.log",
                    ["--dataset", "digits", "--partition", f"{i}/{clients}"],
                )
            )
        assert wait(procs[0], 120, server_log) == 0, read(server_log)
        codes = [wait(p, 30, tmp_path / f"client-{i}.log") for i, p in enumerate(procs[1:])]
    finally:
        stop_all(procs)
    return server_log, codes
