"""FedBuff against FedAvg on the virtual clock: simulated time to a target accuracy when client
speeds are heavy-tailed.

    python bench/async.py [--clients 100] [--alpha A] [--sigma 1.5] [--rounds 60] [--steps 100]
                          [--target 0.9] [--seeds 0,1,2] [--png bench/async.png] [--json PATH]

Every run trains the same MLP from the same initialisation on the same split of digits (IID, or Dirichlet(``--alpha``)) with
the same local work (2 epochs, lr 0.1, vectorized engine) and the same virtual clock (the
``clients`` section): training speeds lognormal around 2 examples per second with sigma
``--sigma``, bandwidth lognormal around 1 Mbit/s with sigma 1, everyone always online. The rows:

- FedAvg: 10% of the clients per round; a round lasts until its slowest client is done.
- FedAvg with a deadline: the same, keeping only the clients done within ``--deadline`` seconds.
- FedBuff (Nguyen et al. 2022): ``--concurrency`` clients at work, a server step every
  ``--buffer`` updates, stale ones weighted by 1/sqrt(1 + staleness).

The table gives, averaged over the seeds, the simulated time at which the central test accuracy
first reaches ``--target`` (and its ratio to FedAvg's), the accuracy at the end of the run, the
mean simulated seconds of a round or server step and the clients trained in one. The PNG plots the
test accuracy against simulated time (seed ``--seeds``' first).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _sim import run_history  # noqa: E402


def reach(history: list[dict[str, Any]], target: float) -> float:
    """The simulated seconds at which accuracy first reaches ``target`` (inf: never)."""
    for record in history:
        if record.get("accuracy", 0.0) >= target:
            return float(record["sim_time"])
    return math.inf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--alpha", type=float, help="Dirichlet(alpha) label skew (default: IID)")
    p.add_argument("--sigma", type=float, default=1.5, help="lognormal sigma of client speeds")
    p.add_argument("--rounds", type=int, default=60, help="FedAvg rounds")
    p.add_argument("--steps", type=int, default=100, help="FedBuff server steps")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--deadline", type=float, default=30.0)
    p.add_argument("--buffer", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--png", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    common = [
        "dataset.name=digits",
        "model.name=mlp",
        *(
            ["partition.kind=iid"]
            if args.alpha is None
            else ["partition.kind=dirichlet", f"partition.alpha={args.alpha}"]
        ),
        f"partition.num_clients={args.clients}",
        "client.epochs=2",
        "client.lr=0.1",
        "engine.name=vectorized",
        "clients.enabled=true",
        "clients.speed=2",
        f"clients.speed_sigma={args.sigma}",
        "clients.bandwidth_mbps=1",
        "clients.bandwidth_sigma=1",
    ]
    fedavg = [f"strategy.fraction_fit={args.fraction}", f"rounds={args.rounds}"]
    algorithms = {
        "FedAvg": fedavg,
        f"FedAvg, deadline {args.deadline:g} s": [*fedavg, f"clients.deadline_s={args.deadline}"],
        f"FedBuff K={args.buffer}, C={args.concurrency}": [
            "strategy.name=fedbuff",
            f"strategy.buffer_size={args.buffer}",
            f"strategy.concurrency={args.concurrency}",
            f"rounds={args.steps}",
        ],
    }
    histories: dict[str, list[list[dict[str, Any]]]] = {}
    for name, extra in algorithms.items():
        for seed in seeds:
            start = time.perf_counter()
            history = run_history([*common, *extra, f"seed={seed}"])
            histories.setdefault(name, []).append(history)
            print(
                f"{name} seed {seed}: accuracy {history[-1]['accuracy']:.3f} at "
                f"{history[-1]['sim_time']:.0f} simulated s, target at "
                f"{reach(history, args.target):.0f} s ({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    first = next(iter(histories))
    base = sum(reach(h, args.target) for h in histories[first]) / len(seeds)
    print(f"target accuracy {args.target}; mean over seeds {seeds}; " + " ".join(common))
    print(
        "| algorithm | simulated min to target | vs FedAvg | final accuracy (at min) "
        "| s per round or step | clients trained per round or step |"
    )
    print("|---|---|---|---|---|---|")
    summary: dict[str, Any] = {}
    for name, runs in histories.items():
        times = [reach(h, args.target) for h in runs]
        to_target = sum(times) / len(runs)
        reached = sum(math.isfinite(t) for t in times)
        final = sum(h[-1]["accuracy"] for h in runs) / len(runs)
        end = sum(h[-1]["sim_time"] for h in runs) / len(runs)
        per_step = sum(r["sim_seconds"] for h in runs for r in h) / sum(len(h) for h in runs)
        used = sum(r["returned"] for h in runs for r in h) / sum(len(h) for h in runs)
        if reached == len(runs):
            minutes, ratio = f"{to_target / 60:.1f}", f"{base / to_target:.2f}x"
        else:  # a mean over seeds that reach it would flatter the row
            minutes, ratio = f"— (reached in {reached} of {len(runs)} seeds)", "—"
        print(
            f"| {name} | {minutes} | {ratio} | {final:.3f} ({end / 60:.0f}) | {per_step:.1f} "
            f"| {used:.1f} |"
        )
        summary[name] = {"to_target_s": to_target, "final_accuracy": final, "end_s": end}
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, runs in histories.items():
            history = runs[0]
            minutes = [r["sim_time"] / 60 for r in history]
            ax.plot(minutes, [r["accuracy"] for r in history], label=name, linewidth=1.2)
        ax.axhline(args.target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("simulated minutes")
        ax.set_ylabel("test accuracy")
        split = "IID" if args.alpha is None else f"Dirichlet({args.alpha:g})"
        ax.set_title(
            f"digits, {split}, {args.clients} clients, speeds lognormal(sigma={args.sigma:g}), "
            f"seed {seeds[0]}",
            fontsize=9,
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"curves: {args.png}")
    if args.json:
        args.json.write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
