"""q-FFL against FedAvg on a label-skewed split: how evenly the final model serves the clients.

    python bench/fairness.py [--alpha 0.3] [--clients 40] [--fraction 0.5] [--rounds 40]
                             [--q 1,5] [--seeds 0,1] [--json PATH]

FedAvg and q-FFL (q-FedAvg, Li et al. 2020) with each ``q`` run on the same Dirichlet(alpha) split
of digits, the same model initialisation, the same clients per round and the same local work, for
each seed, with the vectorized engine and federated evaluation (each client's own test split).
The table gives, averaged over the seeds, the final central test accuracy and the federated
evaluation's per-client accuracy: mean, std and the mean of the worst 10% of clients.
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
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--clients", type=int, default=40)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--q", default="1,5")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    common = [
        "dataset.name=digits",
        "model.name=mlp",
        "partition.kind=dirichlet",
        f"partition.alpha={args.alpha}",
        f"partition.num_clients={args.clients}",
        f"strategy.fraction_fit={args.fraction}",
        f"rounds={args.rounds}",
        f"client.epochs={args.epochs}",
        f"client.lr={args.lr}",
        "eval.federated=true",
        f"eval.every={args.rounds}",
        "engine.name=vectorized",
    ]
    algorithms = {"FedAvg": ["strategy.name=fedavg"]}
    for q in (float(v) for v in args.q.split(",") if v):
        algorithms[f"q-FFL q={q:g}"] = ["strategy.name=qffl", f"strategy.q={q}"]
    finals: dict[str, list[dict[str, float]]] = {}
    for name, extra in algorithms.items():
        for seed in seeds:
            start = time.perf_counter()
            last = run_history([*common, *extra, f"seed={seed}"])[-1]
            finals.setdefault(name, []).append({k: float(last[k]) for k in COLUMNS})
            print(
                f"{name} seed {seed}: {finals[name][-1]} ({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    print(f"final round, mean over seeds {seeds}; " + " ".join(common[:-1]))
    print("| algorithm | central accuracy | per-client mean | per-client std | worst 10% |")
    print("|---|---|---|---|---|")
    summary: dict[str, Any] = {}
    for name, runs in finals.items():
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in COLUMNS}
        print(f"| {name} | " + " | ".join(f"{mean[k]:.3f}" for k in COLUMNS) + " |")
        summary[name] = {"mean": mean, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
