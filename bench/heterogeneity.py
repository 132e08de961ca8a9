"""Heterogeneity benchmark in the manner of NIID-Bench: six algorithms on three label-skewed splits.

    python bench/heterogeneity.py [--quick] [--rounds 30] [--seeds 0,1,2] [--clients 20]
                                  [--fraction 0.5] [--targets T1,T2,T3] [--png PATH]
                                  [--json PATH] [--from-json PATH]
    python bench/heterogeneity.py --grid [--grid-seed 100] [--grid-split KEY] [--algorithms A,B]
    python bench/heterogeneity.py --splits KEY[,KEY] --algorithms A,B [--adam-lr ...]

Split keys: dir0.1, dir0.5, one-label. ``--algorithms`` restricts the run (or the grid) to some of
FedAvg, FedProx, SCAFFOLD, FedNova, FedAdam, FedYogi.

Li, Diao, Chen and He, "Federated Learning on Non-IID Data Silos: An Experimental Study"
(ICDE 2022, NIID-Bench) compares FedAvg, FedProx, SCAFFOLD and FedNova on Dirichlet label skew and
on "#C=k" splits (k labels per client). This script runs FedAvg, FedProx, SCAFFOLD, FedNova,
FedAdam and FedYogi (Reddi et al. 2021) on Fashion-MNIST split three ways:

- ``Dirichlet(0.1)`` and ``Dirichlet(0.5)``: each class's rows are spread over the clients in
  proportions drawn from Dir(alpha) (``partition.kind=dirichlet``);
- ``one label per client``: ``partition.kind=shards`` with one shard per client. Fashion-MNIST has
  6,000 training images per class, so with 10 or 20 clients every shard is exactly one class
  (NIID-Bench's #C=1).

For each seed every algorithm gets the same split, the same initial model, the same clients per
round, the same local work (epochs, batch size, client learning rate, plain SGD) and the same number
of rounds, on the vectorized engine; only the algorithm differs. Hyper-parameters that belong to
one algorithm (FedProx's mu, FedAdam's and FedYogi's server learning rate and tau) are chosen once
by ``--grid`` (one split, a seed that is not reported) and then fixed for every split and seed.

The table gives, per split and algorithm, the final central test accuracy (mean and std over the
seeds), the best accuracy of the seed-mean curve, the first round at which the seed-mean curve
reaches the split's target accuracy, and that round divided by FedAvg's (below 1: fewer rounds
than FedAvg). The PNG has one panel per split with the seed-mean accuracy by round (band: min to
max over the seeds). ``--json`` keeps every curve; ``--from-json`` redraws table and PNG from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _sim import run_history  # noqa: E402

SPLITS: dict[str, list[str]] = {
    "Dirichlet(0.1)": ["partition.kind=dirichlet", "partition.alpha=0.1"],
    "Dirichlet(0.5)": ["partition.kind=dirichlet", "partition.alpha=0.5"],
    "one label per client": ["partition.kind=shards", "partition.shards_per_client=1"],
}
SPLIT_KEYS = dict(zip(("dir0.1", "dir0.5", "one-label"), SPLITS, strict=True))
GRID_SPLIT = "Dirichlet(0.5)"
GRID_MU = (0.001, 0.01, 0.1)
GRID_SERVER_LR = (0.01, 0.03, 0.1, 0.3)
GRID_TAU = (1e-3, 1e-2)
LAST = 5
"""Hyper-parameters are chosen by the mean accuracy of the last LAST rounds (less noisy than one)."""


def algorithms(args: argparse.Namespace) -> dict[str, list[str]]:
    return {
        "FedAvg": ["strategy.name=fedavg"],
        "FedProx": ["strategy.name=fedprox", f"strategy.proximal_mu={args.mu}"],
        "SCAFFOLD": ["strategy.name=scaffold"],
        "FedNova": ["strategy.name=fednova"],
        "FedAdam": adaptive("adam", args.adam_lr, args.adam_tau),
        "FedYogi": adaptive("yogi", args.yogi_lr, args.yogi_tau),
    }


def adaptive(name: str, lr: float, tau: float) -> list[str]:
    return [
        "strategy.name=fedavg",
        f"strategy.server_optimizer={name}",
        f"strategy.server_lr={lr}",
        f"strategy.tau={tau}",
    ]


def common(args: argparse.Namespace) -> list[str]:
    return [
        "dataset.name=fashion_mnist",
        "model.name=mlp",
        f"model.hidden={args.hidden}",
        f"partition.num_clients={args.clients}",
        f"strategy.fraction_fit={args.fraction}",
        f"rounds={args.rounds}",
        f"client.epochs={args.epochs}",
        f"client.batch_size={args.batch}",
        f"client.lr={args.lr}",
        f"engine.threads={args.threads}",
        "engine.name=vectorized",
    ]


def curve(overrides: list[str], label: str) -> list[float]:
    start = time.perf_counter()
    accuracy = [float(r["accuracy"]) for r in run_history(overrides)]
    print(
        f"{label}: final {accuracy[-1]:.4f} ({time.perf_counter() - start:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    return accuracy


def mean_curve(runs: list[list[float]]) -> list[float]:
    return [statistics.fmean(values) for values in zip(*runs, strict=True)]


def first_round(accuracy: list[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(accuracy) if a >= target), None)


def table(results: dict[str, Any]) -> str:
    """The markdown table of a run (``results`` as written to ``--json``)."""
    seeds, targets = results["seeds"], results["targets"]
    lines = [
        f"mean over seeds {seeds}, {results['rounds']} rounds; " + " ".join(results["common"]),
        "",
        "| split | algorithm | final accuracy | best (round) | rounds to target | ÷ FedAvg |",
        "|---|---|---|---|---|---|",
    ]
    for split, by_algorithm in results["curves"].items():
        target = targets[split]
        base = (
            first_round(mean_curve(by_algorithm["FedAvg"]), target)
            if "FedAvg" in by_algorithm
            else None
        )
        for name, runs in by_algorithm.items():
            mean = mean_curve(runs)
            finals = [run[-1] for run in runs]
            std = statistics.stdev(finals) if len(finals) > 1 else 0.0
            best = max(range(len(mean)), key=lambda i: mean[i])
            hit = first_round(mean, target)
            ratio = "—" if hit is None or base is None else f"{hit / base:.2f}"
            reached = f"{hit}" if hit is not None else f"not in {len(mean)}"
            lines.append(
                f"| {split} | {name} | {statistics.fmean(finals):.3f} ± {std:.3f} "
                f"| {mean[best]:.3f} ({best + 1}) | {reached} (≥ {target:.2f}) | {ratio} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = results["curves"]
    fig, grid_axes = plt.subplots(
        1, len(splits), figsize=(5 * len(splits), 4.2), sharey=True, squeeze=False
    )
    axes = list(grid_axes[0])
    for ax, (split, by_algorithm) in zip(axes, splits.items(), strict=True):
        for name, runs in by_algorithm.items():
            rounds = range(1, len(runs[0]) + 1)
            (line,) = ax.plot(rounds, mean_curve(runs), label=name, linewidth=1.2)
            if len(runs) > 1:
                low = [min(v) for v in zip(*runs, strict=True)]
                high = [max(v) for v in zip(*runs, strict=True)]
                ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.12)
        ax.axhline(results["targets"][split], color="grey", linestyle=":", linewidth=1)
        ax.set_title(split)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("central test accuracy")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"Fashion-MNIST, {results['clients']} clients, MLP, mean of seeds {results['seeds']} "
        "(band: min-max); dotted: target"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def grid(args: argparse.Namespace) -> int:
    """The hyper-parameter grid on one split and one seed that the reported runs do not use."""
    grid_split = SPLIT_KEYS[args.grid_split]
    base = [*common(args), *SPLITS[grid_split], f"seed={args.grid_seed}"]
    candidates: dict[str, dict[str, list[str]]] = {
        "FedAvg": {"-": ["strategy.name=fedavg"]},
        "FedProx": {
            f"mu={mu:g}": ["strategy.name=fedprox", f"strategy.proximal_mu={mu}"] for mu in GRID_MU
        },
    }
    for name, optimizer in (("FedAdam", "adam"), ("FedYogi", "yogi")):
        candidates[name] = {
            f"server_lr={lr:g} tau={tau:g}": adaptive(optimizer, lr, tau)
            for lr in GRID_SERVER_LR
            for tau in GRID_TAU
        }
    candidates = {k: v for k, v in candidates.items() if k in args.algorithms}
    print(f"grid on {grid_split}, seed {args.grid_seed}; " + " ".join(base))
    print(f"| algorithm | setting | final accuracy | mean of last {LAST} rounds | best |")
    print("|---|---|---|---|---|")
    for name, settings in candidates.items():
        scores = {}
        for setting, extra in settings.items():
            acc = curve([*base, *extra], f"grid {name} {setting}")
            scores[setting] = statistics.fmean(acc[-LAST:])
            print(
                f"| {name} | {setting} | {acc[-1]:.3f} | {scores[setting]:.3f} | {max(acc):.3f} |"
            )
        print(f"| {name} | chosen: {max(scores, key=lambda s: scores[s])} | | | |", flush=True)
    for split, extra in SPLITS.items():  # FedAvg on every split, to set the targets by
        if split != grid_split and "FedAvg" in args.algorithms:
            acc = curve(
                [*common(args), *extra, f"seed={args.grid_seed}", "strategy.name=fedavg"],
                f"grid FedAvg {split}",
            )
            print(
                f"| FedAvg on {split} | - | {acc[-1]:.3f} | "
                f"{statistics.fmean(acc[-LAST:]):.3f} | {max(acc):.3f} |"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few-minute check: 8 rounds, seed 0")
    p.add_argument("--grid", action="store_true", help="the hyper-parameter grid instead")
    p.add_argument("--grid-seed", type=int, default=100)
    p.add_argument(
        "--grid-split", default="dir0.5", choices=sorted(SPLIT_KEYS), help="the grid's split"
    )
    p.add_argument("--splits", default=",".join(SPLIT_KEYS), help="splits to run (keys)")
    p.add_argument(
        "--algorithms",
        default="FedAvg,FedProx,SCAFFOLD,FedNova,FedAdam,FedYogi",
        help="algorithms to run (FedAvg is the ÷ FedAvg column's reference)",
    )
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--hidden", default="[64]")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: no OpenMP spinning on a busy CPU)"
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1, help="client learning rate (plain SGD)")
    p.add_argument("--mu", type=float, default=0.01, help="FedProx's proximal_mu")
    p.add_argument("--adam-lr", type=float, default=0.1)
    p.add_argument("--adam-tau", type=float, default=1e-3)
    p.add_argument("--yogi-lr", type=float, default=0.1)
    p.add_argument("--yogi-tau", type=float, default=1e-3)
    p.add_argument(
        "--targets",
        default="0.60,0.70,0.45",
        help="target accuracy per split, in the order " + ", ".join(SPLITS),
    )
    p.add_argument(
        "--png",
        help="where to draw the curves (default bench/heterogeneity.png for the whole run; "
        "none with --quick or a subset)",
    )
    p.add_argument("--json", type=Path)
    p.add_argument("--from-json", type=Path, help="redraw the table and PNG of a saved run")
    args = p.parse_args(argv)
    args.algorithms = [a for a in args.algorithms.split(",") if a]
    unknown = set(args.algorithms) - set(algorithms(args))
    if unknown:
        p.error(f"--algorithms: unknown {sorted(unknown)}")
    splits = [k for k in args.splits.split(",") if k]
    if set(splits) - set(SPLIT_KEYS):
        p.error(f"--splits: keys are {', '.join(SPLIT_KEYS)}")
    if args.quick:
        args.rounds, args.seeds = 8, "0"
    elif args.png is None and len(splits) == len(SPLITS) and len(args.algorithms) == 6:
        args.png = str(ROOT / "bench" / "heterogeneity.png")  # only the whole run redraws it
    if args.grid:
        return grid(args)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        targets = [float(t) for t in args.targets.split(",")]
        if len(targets) != len(SPLITS):
            p.error(f"--targets needs {len(SPLITS)} values, one per split: {', '.join(SPLITS)}")
        chosen = {SPLIT_KEYS[k] for k in splits}
        target_of = {s: t for s, t in zip(SPLITS, targets, strict=True) if s in chosen}
        seeds = [int(s) for s in args.seeds.split(",") if s]
        base = common(args)
        curves: dict[str, dict[str, list[list[float]]]] = {}
        start = time.perf_counter()
        for split, split_overrides in SPLITS.items():
            if split not in chosen:
                continue
            for name, extra in algorithms(args).items():
                if name not in args.algorithms:
                    continue
                curves.setdefault(split, {})[name] = [
                    curve(
                        [*base, *split_overrides, *extra, f"seed={seed}"], f"{split} {name} {seed}"
                    )
                    for seed in seeds
                ]
        results = {
            "seeds": seeds,
            "rounds": args.rounds,
            "clients": args.clients,
            "common": base[:-1],
            "algorithms": {k: v for k, v in algorithms(args).items() if k in args.algorithms},
            "targets": target_of,
            "seconds": time.perf_counter() - start,
            "curves": curves,
        }
        print(f"{results['seconds']:.0f} s in all", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(results))
    print(table(results))
    if args.png:
        plot(results, Path(args.png))
        print(f"curves: {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
