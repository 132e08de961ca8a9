"""The composition matrix: every strategy with every protection and deployment mode.

    python bench/compose.py [--strategies fedavg,scaffold,...] [--cells dp-central,...]
                            [--rounds 3] [--clients 6] [--no-grpc] [--json PATH]

Each cell runs ``--rounds`` rounds of the strategy with the cell's settings on digits split over
``--clients`` clients (in process, sequential engine; the ``grpc`` cell starts a real ``fedloom
server`` and one ``fedloom client`` process per client over mTLS on 127.0.0.1; ``grpc-secagg``
the same with secure aggregation) and reports the
final accuracy, or the config error that refuses the combination, or (a bug) any other failure.
A cell is ``ok`` only when every round succeeded and every metric is finite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _deploy import HOST, free_port  # noqa: E402

STRATEGIES: dict[str, list[str]] = {
    "fedavg": ["strategy.name=fedavg"],
    "fedprox": ["strategy.name=fedprox", "strategy.proximal_mu=0.01"],
    "scaffold": ["strategy.name=scaffold"],
    "fednova": ["strategy.name=fednova"],
    "qffl": ["strategy.name=qffl", "strategy.q=1"],
    "fedadam": [
        "strategy.name=fedavg",
        "strategy.server_optimizer=adam",
        "strategy.server_lr=0.01",
    ],
    "fedper": ["strategy.name=fedper", "strategy.personal_layers=[net.2]"],
    "ditto": ["strategy.name=ditto"],
    "ifca": ["strategy.name=ifca", "strategy.clusters=2"],
    "fedbuff": [
        "strategy.name=fedbuff",
        "strategy.buffer_size=3",
        "strategy.concurrency=4",
        "clients.enabled=true",
    ],
    "fedsgd": ["strategy.name=fedsgd", "client.lr=0.5"],
}
CELLS: dict[str, list[str]] = {
    "plain": [],
    "dp-central": [
        "privacy.mechanism=central",
        "privacy.clipping=adaptive",
        "privacy.noise_multiplier=0.3",
    ],
    "dp-client": ["privacy.mechanism=client", "privacy.noise_multiplier=0.3"],
    "secagg": ["secure_aggregation.enabled=true"],
    "topk-int8-ef": [
        "transport.upload=[{topk: 0.1}, int8]",
        "transport.error_feedback=true",
    ],
    "median": ["strategy.aggregator=median"],
    "grpc": [],
    "grpc-secagg": ["secure_aggregation.enabled=true"],
}


def _finite(records: list[dict[str, Any]]) -> bool:
    for record in records:
        for value in record.values():
            if isinstance(value, float) and not math.isfinite(value):
                return False
    return True


def _simulate(overrides: list[str]) -> dict[str, Any]:
    from fedloom.config import load_config
    from fedloom.errors import ConfigError
    from fedloom.simulation import Simulation

    try:
        sim = Simulation(load_config(None, overrides))
        coordinator = sim.coordinator()
    except ConfigError as exc:
        return {"status": "refused", "reason": str(exc).removeprefix("invalid config:").strip()}
    try:
        records = coordinator.run(sim.cfg.rounds)
    except ConfigError as exc:
        return {"status": "refused", "reason": str(exc)}
    finally:
        coordinator.engine.close()
    return _verdict(records)


def _verdict(records: list[dict[str, Any]]) -> dict[str, Any]:
    statuses = [r.get("status") for r in records]
    if not records or statuses != ["ok"] * len(records) or not _finite(records):
        return {"status": "failed", "reason": f"round statuses {statuses}"}
    return {"status": "ok", "accuracy": records[-1].get("accuracy")}


def _deploy(overrides: list[str], clients: int, work: Path) -> dict[str, Any]:
    """A real server and ``clients`` client processes over mTLS on loopback."""
    from fedloom.config import load_config, parse_override
    from fedloom.errors import ConfigError

    try:
        load_config(None, overrides)
    except ConfigError as exc:
        return {"status": "refused", "reason": str(exc).removeprefix("invalid config:").strip()}
    tree: dict[str, Any] = {}
    for item in overrides:
        path, value = parse_override(item)
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    tree.setdefault("server", {}).update({"min_clients": clients, "round_deadline_s": 60})
    tree.pop("clients", None)  # a deployment's clients are real processes
    tree.setdefault("engine", {})["name"] = "sequential"
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump(tree))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "fedloom.cli.main"]
    certs = work / "certs"
    subprocess.run(
        [*cli, "certs", "--out", str(certs), "--clients", str(clients)],
        check=True,
        capture_output=True,
        env=env,
    )
    port = free_port()
    log = work / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                *cli,
                "server",
                "--config",
                str(config),
                "--address",
                f"{HOST}:{port}",
                "--certs",
                str(certs),
                "--state",
                str(work / "state"),
                "--out",
                str(work / "out"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        procs = [
            subprocess.Popen(
                [
                    *cli,
                    "client",
                    "--server",
                    f"{HOST}:{port}",
                    "--certs",
                    str(certs),
                    "--name",
                    f"client-{i}",
                    "--dataset",
                    "digits",
                    "--partition",
                    f"{i}/{clients}",
                    "--give-up-after",
                    "60",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            )
            for i in range(clients)
        ]
        try:
            code = server.wait(timeout=240)
        except subprocess.TimeoutExpired:
            server.kill()
            code = -1
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    text = log.read_text(errors="replace")
    if code != 0:
        lines = [ln for ln in text.splitlines() if "error" in ln.lower()] or text.splitlines()
        reason = lines[-1] if lines else f"exit {code}"
        status = "refused" if "ConfigError" in text else "failed"
        return {"status": status, "reason": reason.strip()}
    metrics = work / "out" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return _verdict(records)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--no-grpc", action="store_true", help="skip the deployment column")
    p.add_argument("--json", type=Path, help="write the matrix here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    base = [
        f"rounds={args.rounds}",
        f"partition.num_clients={args.clients}",
        "engine.name=sequential",
        "client.epochs=1",
        "model.hidden=[32]",
    ]
    cells = [c for c in args.cells.split(",") if not (args.no_grpc and c.startswith("grpc"))]
    matrix: dict[str, dict[str, Any]] = {}
    for name in args.strategies.split(","):
        matrix[name] = {}
        for cell in cells:
            start = time.perf_counter()
            overrides = [*base, *STRATEGIES[name], *CELLS[cell]]
            if cell.startswith("grpc"):
                with tempfile.TemporaryDirectory() as tmp:
                    result = _deploy(overrides, min(args.clients, 3), Path(tmp))
            else:
                result = _simulate(overrides)
            result["seconds"] = round(time.perf_counter() - start, 1)
            matrix[name][cell] = result
            shown = result.get("accuracy", result.get("reason", ""))
            print(f"{name:9s} {cell:13s} {result['status']:8s} {shown}", flush=True)
    print()
    print("| strategy | " + " | ".join(cells) + " |")
    print("|---" * (len(cells) + 1) + "|")
    for name, row in matrix.items():
        marks = []
        for cell in cells:
            r = row[cell]
            if r["status"] == "ok":
                acc = r.get("accuracy")
                marks.append(f"ok {acc:.2f}" if isinstance(acc, float) else "ok")
            else:
                marks.append(r["status"])
        print(f"| {name} | " + " | ".join(marks) + " |")
    refusals = {
        (name, cell): r["reason"]
        for name, row in matrix.items()
        for cell, r in row.items()
        if r["status"] != "ok"
    }
    if refusals:
        print()
        for (name, cell), reason in refusals.items():
            print(f"- {name} x {cell}: {reason}")
    if args.json:
        args.json.write_text(json.dumps(matrix, indent=2))
    return 0 if all(r["status"] != "failed" for row in matrix.values() for r in row.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
