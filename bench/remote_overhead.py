"""Round overhead of the ``remote`` engine against in-process ``sequential``, same config.

20 clients (digits, IID), one local epoch, FedAvg, and an MLP sized to about 1M or 25M
parameters. ``sequential`` runs every client in this process, one after another. ``remote`` runs
a real ``fedloom server`` (TLS + mTLS on 127.0.0.1) and the same 20 clients as ``fedloom client``
sessions (threads in ``--processes`` worker processes, one gRPC channel each); each round sends the
global model down to, and one update up from, every client in 1 MiB chunks.

Reports seconds per round (round 1 separately: it includes the clients' first-touch warm-up) and
the payload bytes each round puts on the wire (gRPC and TLS framing add about 0.2%: ~30 bytes
per 1 MiB chunk and ~29 bytes per 16 KiB TLS record).

    .venv/bin/python bench/remote_overhead.py --sizes 1M 25M --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _deploy import parsers, run_clients, start_deployment

REPO = Path(__file__).resolve().parents[1]

HIDDEN = {"1M": [1000, 936], "25M": [4096, 6000]}


def _config(path: Path, size: str, rounds: int, clients: int) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "seed": 0,
                "rounds": rounds,
                "partition": {"kind": "iid", "num_clients": clients},
                "model": {"name": "mlp", "hidden": HIDDEN[size]},
                "client": {"epochs": 1, "batch_size": 32, "lr": 0.05},
                "server": {
                    "min_clients": clients,
                    "round_deadline_s": 600.0,
                    "heartbeat_s": 5.0,
                    "heartbeat_timeout_s": 120.0,
                    "join_timeout_s": 600.0,
                },
            }
        )
    )
    return path


def worker(args: argparse.Namespace) -> int:
    from fedloom.app.clients import demo_factory

    return run_clients(args, lambda i: demo_factory("digits", i, args.total), give_up_after=300)


def sequential(config: Path) -> list[dict[str, Any]]:
    from fedloom.config import load_config
    from fedloom.simulation import Simulation

    cfg = load_config(config)
    return Simulation(cfg).coordinator().run(cfg.rounds)


def remote(config: Path, work: Path, clients: int, processes: int) -> list[dict[str, Any]]:
    from fedloom.transport.certs import create_certs

    certs = work / "certs"
    create_certs(certs, clients)
    with (work / "server.log").open("wb") as log:
        server, workers = start_deployment(__file__, config, work, clients, processes, log)
    if server.wait(timeout=3600) != 0:
        raise RuntimeError((work / "server.log").read_text()[-3000:])
    for w in workers:
        w.wait(timeout=120)
    lines = (work / "out" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _row(engine: str, size: str, history: list[dict[str, Any]], params: int) -> dict[str, Any]:
    seconds = [r["seconds"] for r in history]
    return {
        "engine": engine,
        "model": size,
        "num_parameters": params,
        "round1_s": round(seconds[0], 2),
        "steady_s_per_round": round(statistics.mean(seconds[1:] or seconds), 2),
        "payload_bytes_down_per_round": history[-1]["bytes_down"],
        "payload_bytes_up_per_round": history[-1]["bytes_up"],
        "accuracy": round(history[-1].get("accuracy", float("nan")), 4),
    }


def main(args: argparse.Namespace) -> int:
    from fedloom.config import load_config
    from fedloom.simulation import Simulation

    rows = []
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"fedloom-overhead-{size}-"))
        config = _config(work / "run.yaml", size, args.rounds, args.clients)
        params = Simulation(load_config(config)).spec.size
        start = time.perf_counter()
        rows.append(_row("sequential", size, sequential(config), params))
        print(f"sequential {size}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        start = time.perf_counter()
        rows.append(
            _row("remote", size, remote(config, work, args.clients, args.processes), params)
        )
        print(f"remote {size}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(json.dumps(rows, indent=2))
    return 0


def parse() -> argparse.Namespace:
    p, _ = parsers(__doc__)
    p.add_argument("--sizes", nargs="+", default=["1M", "25M"], choices=sorted(HIDDEN))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--processes", type=int, default=4)
    return p.parse_args()


if __name__ == "__main__":
    ns = parse()
    sys.exit(worker(ns) if ns.mode == "worker" else main(ns))
