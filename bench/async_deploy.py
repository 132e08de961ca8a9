"""FedBuff against FedAvg in a real deployment, on wall-clock time, with heavy-tailed client speeds.

A real ``fedloom server`` (TLS + mTLS on 127.0.0.1) and ``--clients`` ``fedloom client`` sessions
(threads in ``--processes`` worker processes) on IID digits. Each client's device is emulated as
slow by a fixed extra delay per fit, drawn once per client from a seeded lognormal (median
``--median-delay`` seconds, sigma ``--sigma``): heavy-tailed, so a synchronous round waits for the
slowest client it picked. Both algorithms get the same budget of client updates:

- FedAvg: every client each round, ``--rounds`` rounds (a round waits for all of them);
- FedBuff: K = ``--buffer`` updates per server step, C = ``--concurrency`` clients at work, and
  ``rounds * clients / K`` steps (the same number of updates).

Reports, per algorithm, the wall seconds until central accuracy on the digits test split first
reaches ``--target``, the final accuracy and the total time, and the speed-up of FedBuff.
Seconds are the sum of the rounds' ``seconds`` in metrics.jsonl (the coordinator's time per
round or step, from its start to its evaluation).

    .venv/bin/python bench/async_deploy.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from _deploy import parsers, run_clients, start_deployment


def delays(args: argparse.Namespace) -> list[float]:
    rng = np.random.default_rng(args.seed)
    drawn = rng.lognormal(np.log(args.median_delay), args.sigma, size=args.clients)
    return [round(float(d), 3) for d in drawn]


class Delayed:
    """A client that takes ``delay`` extra seconds per fit (an emulated slow device)."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.num_examples = inner.num_examples

    def fit(self, params: Any, config: Mapping[str, Any], context: Any = None) -> Any:
        time.sleep(self.delay)
        return self.inner.fit(params, config, context)

    def evaluate(self, params: Any, config: Mapping[str, Any], context: Any = None) -> Any:
        return self.inner.evaluate(params, config, context)


def worker(args: argparse.Namespace) -> int:
    from fedloom.app.clients import demo_factory

    slow = delays(args)

    def factory_for(i: int) -> Any:
        build = demo_factory("digits", i, args.total)
        return lambda cfg, cid: Delayed(build(cfg, cid), slow[i])

    return run_clients(args, factory_for, give_up_after=300)


def config(path: Path, args: argparse.Namespace, strategy: dict[str, Any], rounds: int) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "seed": args.seed,
                "rounds": rounds,
                "partition": {"kind": "iid", "num_clients": args.clients},
                "model": {"name": "mlp", "hidden": [64]},
                "client": {"epochs": 1, "batch_size": 16, "lr": args.lr},
                "strategy": strategy,
                "server": {
                    "min_clients": args.clients,
                    "round_deadline_s": 600.0,
                    "heartbeat_s": 2.0,
                    "heartbeat_timeout_s": 60.0,
                    "join_timeout_s": 600.0,
                },
            }
        )
    )
    return path


def deploy(name: str, args: argparse.Namespace, strategy: dict[str, Any], rounds: int) -> Any:
    from fedloom.transport.certs import create_certs

    work = Path(tempfile.mkdtemp(prefix=f"fedloom-async-{name}-"))
    create_certs(work / "certs", args.clients)
    cfg = config(work / "run.yaml", args, strategy, rounds)
    extra = [
        "--median-delay",
        str(args.median_delay),
        "--sigma",
        str(args.sigma),
        "--seed",
        str(args.seed),
    ]
    start = time.perf_counter()
    with (work / "server.log").open("wb") as log:
        server, workers = start_deployment(
            __file__, cfg, work, args.clients, args.processes, log, extra_worker_args=extra
        )
    if server.wait(timeout=3600) != 0:
        raise RuntimeError((work / "server.log").read_text()[-3000:])
    for w in workers:
        w.wait(timeout=120)
    wall = time.perf_counter() - start
    lines = (work / "out" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], wall


def row(name: str, history: list[dict[str, Any]], wall: float, target: float) -> dict[str, Any]:
    elapsed = np.cumsum([r["seconds"] for r in history])
    hit = next((i for i, r in enumerate(history) if r.get("accuracy", 0.0) >= target), None)
    return {
        "algorithm": name,
        "rounds_or_steps": len(history),
        "updates": sum(r["returned"] for r in history),
        "seconds_to_target": None if hit is None else round(float(elapsed[hit]), 1),
        "final_accuracy": round(history[-1]["accuracy"], 4),
        "seconds_total": round(float(elapsed[-1]), 1),
        "wall_with_startup_s": round(wall, 1),
        "staleness_max": max((r.get("staleness_max", 0) for r in history), default=0),
    }


def main(args: argparse.Namespace) -> int:
    slow = delays(args)
    print(
        f"client delays (s): median {np.median(slow):.2f}, max {max(slow):.2f}, "
        f"min {min(slow):.2f}",
        file=sys.stderr,
    )
    steps = args.rounds * args.clients // args.buffer
    runs = {
        "FedAvg": ({"name": "fedavg"}, args.rounds),
        f"FedBuff K={args.buffer}, C={args.concurrency}": (
            {"name": "fedbuff", "buffer_size": args.buffer, "concurrency": args.concurrency},
            steps,
        ),
    }
    rows = []
    for name, (strategy, rounds) in runs.items():
        history, wall = deploy(name.split()[0].lower(), args, strategy, rounds)
        rows.append(row(name, history, wall, args.target))
        print(json.dumps(rows[-1]), file=sys.stderr)
    base = rows[0]["seconds_to_target"]
    for r in rows:
        t = r["seconds_to_target"]
        r["speedup_to_target"] = None if t is None or base is None else round(base / t, 2)
    print(json.dumps(rows, indent=2))
    return 0


def parse() -> argparse.Namespace:
    p, w = parsers(__doc__)
    for q in (p, w):
        q.add_argument("--median-delay", type=float, default=0.5)
        q.add_argument("--sigma", type=float, default=1.0)
        q.add_argument("--seed", type=int, default=0)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--buffer", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--target", type=float, default=0.85)
    p.add_argument("--processes", type=int, default=2)
    return p.parse_args()


if __name__ == "__main__":
    ns = parse()
    sys.exit(worker(ns) if ns.mode == "worker" else main(ns))
