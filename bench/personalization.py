"""Personalisation against FedAvg on a pathological non-IID split: each client's own accuracy.

    python bench/personalization.py [--clients 20] [--shards 2] [--rounds 20] [--epochs 1]
                                    [--lr 0.05] [--lam 0.1] [--clusters 3] [--seeds 0,1]
                                    [--json PATH]

Digits split into shards of one class (``partition.kind=shards``), ``--shards`` per client, so a
client sees one or two classes. Every algorithm runs on the same split, model initialisation and
local work, every client in every round (a personal model needs its client to train), with the
vectorized engine and federated evaluation: each client scores, on its own test split,

- FedAvg: the global model;
- FedAvg + fine-tuning: the global model after one local epoch (``eval.finetune_epochs=1``);
- FedPer: the global base layers with its own classifier (``strategy.personal_layers=[net.2]``);
- Ditto: its personal model (``strategy.lambda``);
- IFCA: the model of the cluster it picks (``strategy.clusters``).

The table gives, averaged over the seeds at the final round, the central test accuracy of the
global model (for IFCA the largest cluster's, for FedPer with the initial, untrained classifier,
so it is not meaningful there) and the per-client accuracy: mean, std and the mean of the worst
10% of clients.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _sim import run_history  # noqa: E402

COLUMNS = ("accuracy", "fed_accuracy_mean", "fed_accuracy_std", "fed_accuracy_worst10")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--shards", type=int, default=2, help="shards (classes) per client")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lam", type=float, default=0.1, help="Ditto's lambda")
    p.add_argument("--clusters", type=int, default=3, help="IFCA's k")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    common = [
        "dataset.name=digits",
        "model.name=mlp",
        "partition.kind=shards",
        f"partition.shards_per_client={args.shards}",
        f"partition.num_clients={args.clients}",
        "strategy.fraction_fit=1.0",
        f"rounds={args.rounds}",
        f"client.epochs={args.epochs}",
        f"client.lr={args.lr}",
        "eval.federated=true",
        f"eval.every={args.rounds}",
        "engine.name=vectorized",
        "engine.threads=1",  # tiny models: more threads only contend on a shared 2-core machine
    ]
    algorithms = {
        "FedAvg": ["strategy.name=fedavg"],
        "FedAvg + fine-tuning (1 epoch)": ["strategy.name=fedavg", "eval.finetune_epochs=1"],
        "FedPer (net.2 personal)": ["strategy.name=fedper", "strategy.personal_layers=[net.2]"],
        f"Ditto lambda={args.lam:g}": ["strategy.name=ditto", f"strategy.lambda={args.lam}"],
        f"IFCA k={args.clusters}": ["strategy.name=ifca", f"strategy.clusters={args.clusters}"],
    }
    finals: dict[str, list[dict[str, float]]] = {}
    began = time.perf_counter()
    for name, extra in algorithms.items():
        for seed in seeds:
            start = time.perf_counter()
            last = run_history([*common, *extra, f"seed={seed}"])[-1]
            finals.setdefault(name, []).append({k: float(last[k]) for k in COLUMNS})
            elapsed = time.perf_counter() - start
            print(f"{name} seed {seed}: {finals[name][-1]} ({elapsed:.1f} s)", file=sys.stderr)
    print(f"final round, mean over seeds {seeds}; " + " ".join(common[:-2]))
    print("| algorithm | central accuracy | per-client mean | per-client std | worst 10% |")
    print("|---|---|---|---|---|")
    summary: dict[str, Any] = {}
    for name, runs in finals.items():
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in COLUMNS}
        cells = " | ".join(f"{mean[k]:.3f}" for k in COLUMNS)
        print(f"| {name} | {cells} |")
        summary[name] = {"mean": mean, "runs": runs}
    print(f"{time.perf_counter() - began:.0f} s in all", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
