"""q-FFL against FedAvg on a non-IID split: how evenly the final model serves the clients.

    python bench/fairness.py [--partition dirichlet|quantity|shards] [--alpha 0.3] [--sigma 1]
                             [--shards-per-client 2] [--model mlp] [--clients 40]
                             [--fraction 0.5] [--rounds 40] [--epochs 1] [--lr 0.05]
                             [--q 1,5] [--lipschitz default] [--sampling fixed]
                             [--seeds 0,1] [--no-fedavg] [--json PATH]

FedAvg and q-FFL (q-FedAvg, Li et al. 2020) with each ``q``, each Lipschitz estimate ``L``
(``strategy.qffl_lipschitz``; ``default`` is 1 / lr) and each client sampling (``fixed``:
uniform, clients weighted by their examples; ``size``: drawn in proportion to their examples
and summed unweighted, the paper's setting) run on the same split of digits (Dirichlet(alpha)
label skew, lognormal quantity skew with IID labels, or label shards), the same model
initialisation, the same clients per round and the same local work, for each seed, with the
vectorized engine and federated evaluation (each client's own test split). FedAvg samples
uniformly and weights clients by their examples. The table gives, averaged over the seeds, the
final central test accuracy and the federated evaluation's per-client accuracy: mean, std and
the mean of the worst 10% of clients; with FedAvg and several seeds, also the per-client std
and worst 10% minus FedAvg's on the same seed (same split, same initialisation), as mean ±
standard error over the seeds.
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
    p.add_argument("--partition", choices=("dirichlet", "quantity", "shards"), default="dirichlet")
    p.add_argument("--alpha", type=float, default=0.3, help="dirichlet concentration")
    p.add_argument("--sigma", type=float, default=1.0, help="quantity: lognormal sigma")
    p.add_argument("--shards-per-client", type=int, default=2)
    p.add_argument("--model", default="mlp")
    p.add_argument("--clients", type=int, default=40)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--q", default="1,5")
    p.add_argument("--lipschitz", default="default", help="q-FFL's L values ('default': 1/lr)")
    p.add_argument("--sampling", default="fixed", help="q-FFL's client sampling: fixed, size")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--fedavg", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    common = [
        "dataset.name=digits",
        f"model.name={args.model}",
        f"partition.kind={args.partition}",
        *{
            "dirichlet": [f"partition.alpha={args.alpha}"],
            "quantity": [f"partition.quantity_sigma={args.sigma}"],
            "shards": [f"partition.shards_per_client={args.shards_per_client}"],
        }[args.partition],
        f"partition.num_clients={args.clients}",
        f"strategy.fraction_fit={args.fraction}",
        f"rounds={args.rounds}",
        f"client.epochs={args.epochs}",
        f"client.lr={args.lr}",
        "eval.federated=true",
        f"eval.every={args.rounds}",
        "engine.name=vectorized",
        "engine.threads=1",  # two torch threads on a busy 2-core machine ran 3x slower
    ]
    algorithms = {"FedAvg": ["strategy.name=fedavg"]} if args.fedavg else {}
    lipschitz = [v for v in args.lipschitz.split(",") if v]
    samplings = [v for v in args.sampling.split(",") if v]
    for sampling in samplings:
        for q in (float(v) for v in args.q.split(",") if v):
            for lip in lipschitz:
                name = f"q-FFL q={q:g}"
                if len(lipschitz) > 1 or lip != "default":
                    name += f" L={1 / args.lr:g}" if lip == "default" else f" L={float(lip):g}"
                if len(samplings) > 1 or sampling != "fixed":
                    name += f" {sampling}"
                algorithms[name] = [
                    "strategy.name=qffl",
                    f"strategy.q={q}",
                    f"strategy.sampling={sampling}",
                    f"strategy.qffl_lipschitz={'null' if lip == 'default' else float(lip)}",
                ]
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
    paired = "FedAvg" in finals and len(seeds) > 1
    head = "| algorithm | central accuracy | per-client mean | per-client std | worst 10% |"
    print(head + (" std - FedAvg's | worst 10% - FedAvg's |" if paired else ""))
    print("|---|---|---|---|---|" + ("---|---|" if paired else ""))
    summary: dict[str, Any] = {}
    for name, runs in finals.items():
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in COLUMNS}
        row = f"| {name} | " + " | ".join(f"{mean[k]:.3f}" for k in COLUMNS) + " |"
        if paired and name == "FedAvg":
            row += "  |  |"
        elif paired:  # the same seed is the same split and initialisation: compare seed by seed
            for key in COLUMNS[2:]:
                diffs = [r[key] - f[key] for r, f in zip(runs, finals["FedAvg"], strict=True)]
                row += f" {_mean_and_error(diffs)} |"
        print(row)
        summary[name] = {"mean": mean, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **summary}))
    return 0


def _mean_and_error(values: list[float]) -> str:
    """``mean ± standard error`` of paired differences."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return f"{mean:+.3f} ± {(var / n) ** 0.5:.3f}"


if __name__ == "__main__":
    sys.exit(main())
