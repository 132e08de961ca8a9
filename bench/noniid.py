"""FedAvg, FedProx and SCAFFOLD on a label-skewed split: accuracy by round, same seeds and budget.

    python bench/noniid.py [--dataset digits] [--alpha 0.1] [--clients 50] [--fraction 0.2]
                           [--rounds 60] [--epochs 2] [--lr 0.05] [--seeds 0,1,2] [--json PATH]

Every algorithm runs on the same Dirichlet(alpha) split, the same model initialisation, the same
clients per round and the same local work (epochs, batch size, learning rate) for each seed, with
the vectorized engine; the table gives the mean central test accuracy over the seeds at selected
rounds, and the best round. Each run takes seconds on digits (see the README for the numbers).
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

ALGORITHMS: dict[str, list[str]] = {
    "FedAvg": ["strategy.name=fedavg"],
    "FedProx mu=0.01": ["strategy.name=fedprox", "strategy.proximal_mu=0.01"],
    "FedProx mu=0.1": ["strategy.name=fedprox", "strategy.proximal_mu=0.1"],
    "SCAFFOLD": ["strategy.name=scaffold"],
}


def run(overrides: list[str]) -> list[float]:
    return [float(r["accuracy"]) for r in run_history(overrides)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--fraction", type=float, default=0.2)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    common = [
        f"dataset.name={args.dataset}",
        f"model.name={args.model}",
        "partition.kind=dirichlet",
        f"partition.alpha={args.alpha}",
        f"partition.num_clients={args.clients}",
        f"strategy.fraction_fit={args.fraction}",
        f"rounds={args.rounds}",
        f"client.epochs={args.epochs}",
        f"client.batch_size={args.batch}",
        f"client.lr={args.lr}",
        "engine.name=vectorized",
    ]
    curves: dict[str, list[list[float]]] = {}
    for name, extra in ALGORITHMS.items():
        for seed in seeds:
            start = time.perf_counter()
            acc = run([*common, *extra, f"seed={seed}"])
            curves.setdefault(name, []).append(acc)
            print(
                f"{name} seed {seed}: final {acc[-1]:.4f} ({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    marks = sorted({1, 5, 10, 20, 30, 40, args.rounds} & set(range(1, args.rounds + 1)))
    print(f"mean central test accuracy over seeds {seeds}; " + " ".join(common[:-1]))
    print("| algorithm | " + " | ".join(f"round {m}" for m in marks) + " | best (round) |")
    print("|---|" + "---|" * (len(marks) + 1))
    summary: dict[str, Any] = {}
    for name, runs in curves.items():
        mean = [sum(r[i] for r in runs) / len(runs) for i in range(args.rounds)]
        best = max(range(args.rounds), key=lambda i: mean[i])
        cells = [f"{mean[m - 1]:.3f}" for m in marks]
        print(f"| {name} | " + " | ".join(cells) + f" | {mean[best]:.3f} ({best + 1}) |")
        summary[name] = {"mean": mean, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
