"""Shared by the deployment benchmarks: a free loopback port, and a worker process that hosts a
share of the clients as threads, each with its own gRPC channel, TLS session and long poll."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def parsers(description: str | None) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The benchmark's parser and its ``worker`` sub-command's (the flags ``start_deployment``
    passes each worker process): add the benchmark's own flags to either."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="mode")
    w = sub.add_parser("worker", help="internal: host a share of the clients")
    for flag in ("--port", "--first", "--count", "--total"):
        w.add_argument(flag, type=int, required=True)
    w.add_argument("--certs", required=True)
    return p, w


def run_clients(
    args: argparse.Namespace, factory_for: Callable[[int], Any], give_up_after: float
) -> int:
    """Run clients ``args.first .. args.first + args.count - 1`` against ``args.port`` until the
    run ends; ``factory_for(i)`` is client ``i``'s client factory. 0 when every client exits 0."""
    from fedloom.client.deploy import ClientOptions, DeploymentClient

    codes: list[int] = []

    def one(i: int) -> None:
        opts = ClientOptions(
            server=f"{HOST}:{args.port}",
            name=f"client-{i}",
            certs=Path(args.certs),
            give_up_after=give_up_after,
            quiet=True,
        )
        codes.append(DeploymentClient(opts, factory_for(i)).run())

    threads = [
        threading.Thread(target=one, args=(i,)) for i in range(args.first, args.first + args.count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0 if codes == [0] * args.count else 1


def start_deployment(
    script: str,
    config: Path,
    work: Path,
    clients: int,
    processes: int,
    log: IO[bytes],
    env: dict[str, str] | None = None,
    extra_worker_args: list[str] | None = None,
) -> tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]:
    """Start ``fedloom server`` (TLS + mTLS on a free loopback port, certificates in
    ``work/certs``, output to ``log``) and ``processes`` worker processes of ``script`` hosting
    ``clients`` clients between them (given ``extra_worker_args`` too), all with ``env`` added to
    the environment; returns the server and the workers."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    certs = str(work / "certs")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedloom.cli.main",
            "server",
            "--config",
            str(config),
            "--address",
            f"{HOST}:{port}",
            "--certs",
            certs,
            "--state",
            str(work / "state"),
            "--out",
            str(work / "out"),
            "-q",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    per = -(-clients // processes)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                script,
                "worker",
                "--port",
                str(port),
                "--certs",
                certs,
                "--first",
                str(first),
                "--count",
                str(min(per, clients - first)),
                "--total",
                str(clients),
                *(extra_worker_args or []),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for first in range(0, clients, per)
    ]
    return server, workers
