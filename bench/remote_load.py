"""Load test of a real deployment: many concurrent clients, one round, no update lost.

A ``fedloom server`` process (TLS with mTLS, as deployed) and ``--clients`` concurrent clients on
127.0.0.1. The clients run as threads in ``--processes`` worker processes, each client with its own
gRPC channel (its own TCP connection and TLS session), its own session, heartbeat and long poll,
so the server sees exactly what it would see from that many machines. Client ``i`` returns the
constant update ``(i + 1) / N`` with ``num_examples = i + 1``, so the aggregate is known in closed
form: the check below fails if a single update is lost, duplicated or corrupted.

Reports the round's time (server-side, from the first task handed out to the new global model),
the wall time, and the server's peak resident memory.

    .venv/bin/python bench/remote_load.py --clients 200 --processes 8
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
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]


class ConstantUpdateClient:
    """Returns ``value`` for every parameter, weighted by ``num_examples``."""

    def __init__(self, value: float, num_examples: int) -> None:
        self.value = value
        self.num_examples = num_examples

    def fit(self, params: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        from fedloom.client.base import FitResult
        from fedloom.core.params import ParamSpec

        size = ParamSpec.of(params).size
        return FitResult(np.full(size, self.value, np.float32), self.num_examples)

    def evaluate(self, params: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        from fedloom.client.base import EvalResult

        return EvalResult(loss=0.0, num_examples=1)


def worker(args: argparse.Namespace) -> int:
    def factory_for(i: int) -> Any:
        client = ConstantUpdateClient((i + 1) / args.total, i + 1)
        return lambda cfg, cid: client

    return run_clients(args, factory_for, give_up_after=120)


def main(args: argparse.Namespace) -> int:
    from fedloom.config import load_config
    from fedloom.simulation import Simulation
    from fedloom.transport.certs import create_certs

    n = args.clients
    work = Path(tempfile.mkdtemp(prefix="fedloom-load-"))
    create_certs(work / "certs", n)
    config = work / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "seed": 0,
                "rounds": 1,
                "partition": {"num_clients": n},
                "model": {"name": "mlp", "hidden": [args.hidden]},
                "server": {
                    "min_clients": n,
                    "round_deadline_s": 300.0,
                    "heartbeat_s": 5.0,
                    "heartbeat_timeout_s": 60.0,
                    "poll_s": 10.0,
                    "join_timeout_s": 300.0,
                    "max_workers": 2 * n + 64,
                },
            }
        )
    )
    log = (work / "server.log").open("wb")
    start = time.perf_counter()
    server, workers = start_deployment(
        __file__, config, work, n, args.processes, log, env={"OMP_NUM_THREADS": "1"}
    )
    code = server.wait(timeout=900)
    worker_codes = [w.wait(timeout=120) for w in workers]
    wall = time.perf_counter() - start
    log.close()
    if code != 0:
        print((work / "server.log").read_text()[-3000:], file=sys.stderr)
        return 1

    summary = json.loads((work / "out" / "summary.json").read_text())
    record = json.loads((work / "out" / "metrics.jsonl").read_text().splitlines()[0])
    sim = Simulation(load_config(config))
    init = sim.init_params
    weights = np.arange(1, n + 1, dtype=np.float64)
    expected_shift = float(np.sum(weights * weights / n) / np.sum(weights))
    got = load_file(str(work / "out" / "model.safetensors"))
    shift = sim.spec.flatten({name: got[name] for name in sim.spec.names}) - init
    lossless = bool(np.allclose(shift, expected_shift, rtol=1e-5, atol=1e-6))
    report = {
        "clients": n,
        "processes": len(workers),
        "returned": record["returned"],
        "rejected": record["rejected"],
        "dropped": record.get("dropped"),
        "no_update_lost": lossless and record["returned"] == n,
        "round_seconds": round(record["seconds"], 2),
        "wall_seconds_including_startup": round(wall, 1),
        "server_peak_rss_mb": round(summary["deployment"]["peak_rss_mb"], 1),
        "num_parameters": summary["num_parameters"],
        "bytes_up": record["bytes_up"],
        "bytes_down": record["bytes_down"],
        "clients_exit_codes_ok": worker_codes == [0] * len(workers),
        "work_dir": str(work),
    }
    print(json.dumps(report, indent=2))
    return 0 if report["no_update_lost"] and report["clients_exit_codes_ok"] else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p, _ = parsers(__doc__)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--processes", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64, help="MLP width (model size)")
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = parse()
    sys.exit(worker(ns) if ns.mode == "worker" else main(ns))
