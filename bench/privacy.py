"""Central DP-FedAvg: test accuracy against epsilon, beside the non-private run, in one process.

    python bench/privacy.py [--dataset fashion_mnist] [--clients 1000] [--fraction 0.1]
                            [--rounds 30] [--noise 0.1,0.3,1.0] [--clip 1.0] [--png PATH]
                            [--json PATH]

Every setting runs the same IID split into ``--clients`` clients, the same model initialisation,
Poisson sampling at rate ``--fraction`` and the same local work (1 epoch of SGD, batch 10) on the
vectorized engine; the private runs clip every update to ``--clip`` and add central Gaussian noise
of ``z * clip`` to the sum (``privacy.mechanism=central``), accounted with RDP at delta 1e-5. The
table gives each run's epsilon and accuracy after the last round; the PNG plots accuracy by round
and final accuracy against epsilon.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--noise", default="0.1,0.3,1.0", help="noise multipliers, comma-separated")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default=str(ROOT / "bench" / "privacy.png"), help="'' for none")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    common = [
        f"seed={args.seed}",
        f"dataset.name={args.dataset}",
        "model.name=mlp",
        "model.hidden=[64]",
        "partition.kind=iid",
        f"partition.num_clients={args.clients}",
        f"strategy.fraction_fit={args.fraction}",
        "strategy.sampling=poisson",
        f"rounds={args.rounds}",
        "client.epochs=1",
        "client.batch_size=10",
        f"client.lr={args.lr}",
        "engine.name=vectorized",
    ]
    settings: dict[str, list[str]] = {"non-private": []}
    for z in [float(s) for s in args.noise.split(",") if s]:
        settings[f"z = {z:g}"] = [
            "privacy.mechanism=central",
            f"privacy.clip_norm={args.clip}",
            f"privacy.noise_multiplier={z}",
            "privacy.delta=1e-5",
            f"privacy.noise_seed={args.seed}",
        ]
    runs: dict[str, dict[str, Any]] = {}
    for name, extra in settings.items():
        start = time.perf_counter()
        history = run_history([*common, *extra])
        runs[name] = {
            "accuracy": [float(r["accuracy"]) for r in history],
            "epsilon": [float(r.get("epsilon", float("inf"))) for r in history],
            "unclipped": [r.get("unclipped_fraction") for r in history],
            "seconds": time.perf_counter() - start,
        }
        print(
            f"{name}: accuracy {runs[name]['accuracy'][-1]:.4f}, epsilon "
            f"{runs[name]['epsilon'][-1]:.3g} ({runs[name]['seconds']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"{args.dataset}, {args.clients} clients (IID), Poisson q = {args.fraction:g}, "
        f"{args.rounds} rounds, clip {args.clip:g}, delta 1e-5, seed {args.seed}"
    )
    print("| run | epsilon | final accuracy | best accuracy | unclipped (last round) | seconds |")
    print("|---|---|---|---|---|---|")
    for name, run in runs.items():
        eps = run["epsilon"][-1]
        unclipped = run["unclipped"][-1]
        print(
            f"| {name} | {'∞' if eps == float('inf') else f'{eps:.2f}'} | "
            f"{run['accuracy'][-1]:.3f} | {max(run['accuracy']):.3f} | "
            f"{'-' if unclipped is None else f'{unclipped:.2f}'} | {run['seconds']:.0f} |"
        )
    if args.png:
        plot(runs, Path(args.png), args)
        print(f"wrote {args.png}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **runs}))
    return 0


def plot(runs: dict[str, dict[str, Any]], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_round, by_eps) = plt.subplots(1, 2, figsize=(10, 4))
    for name, run in runs.items():
        by_round.plot(range(1, len(run["accuracy"]) + 1), run["accuracy"], label=name)
    by_round.set_xlabel("round")
    by_round.set_ylabel("test accuracy")
    by_round.legend()
    private = {n: r for n, r in runs.items() if r["epsilon"][-1] != float("inf")}
    xs = [r["epsilon"][-1] for r in private.values()]
    ys = [r["accuracy"][-1] for r in private.values()]
    by_eps.plot(xs, ys, "o-", label="central DP-FedAvg")
    for name, x, y in zip(private, xs, ys, strict=True):
        by_eps.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10))
    if "non-private" in runs:
        by_eps.axhline(
            runs["non-private"]["accuracy"][-1], color="gray", ls="--", label="non-private"
        )
    by_eps.set_xscale("log")
    by_eps.set_xlabel(f"epsilon after {args.rounds} rounds (delta 1e-5)")
    by_eps.set_ylabel("final test accuracy")
    by_eps.legend()
    fig.suptitle(
        f"central DP-FedAvg, {args.dataset}, {args.clients} clients, q = {args.fraction:g}, "
        f"clip {args.clip:g}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
