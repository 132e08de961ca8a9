"""Central DP-FedAvg: test accuracy against epsilon, beside the non-private run, in one process;
and DP-SGD: one round of a cohort on fedloom's vectorized engine against Opacus client by client.

    python bench/privacy.py [--dataset fashion_mnist] [--clients 1000] [--fraction 0.1]
                            [--rounds 30] [--noise 0.1,0.3,1.0] [--clip 1.0] [--png PATH]
                            [--json PATH]
    python bench/privacy.py --dp-sgd [--dataset fashion_mnist] [--cohort 50] [--repeats 2]

``--dp-sgd`` trains the same cohort (the first ``--cohort`` of ``--clients`` IID clients, one
epoch, batch 10, per-example clip 1.0, noise 1.0, MLP 784-64-10) three ways in one process:
Opacus (``GradSampleModule`` + ``DPOptimizer``, one client after another, the usual way to run
it in a federation), fedloom's sequential engine (the same DP-SGD eagerly), and fedloom's
vectorized engine; it prints the median seconds per round of each and the ratios.

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
    p.add_argument("--dp-sgd", action="store_true", help="the DP-SGD speed comparison instead")
    p.add_argument("--cohort", type=int, default=50, help="--dp-sgd: clients in the round")
    p.add_argument("--repeats", type=int, default=2, help="--dp-sgd: rounds timed per way")
    args = p.parse_args(argv)
    if args.dp_sgd:
        return dp_sgd_speed(args)
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


def dp_sgd_speed(args: argparse.Namespace) -> int:
    import statistics
    import warnings

    import numpy as np
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from fedloom.config import load_config
    from fedloom.core.task import FIT, MODEL, Blob, Task, Upload, blob_table
    from fedloom.engines import SequentialEngine
    from fedloom.engines.vectorized import VectorizedEngine

    # Opacus's hooks fire on the first layer, whose input needs no gradient: expected, harmless
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    cfg = load_config(
        None,
        [
            f"dataset.name={args.dataset}",
            "model.name=mlp",
            "model.hidden=[64]",
            f"partition.num_clients={args.clients}",
            "client.epochs=1",
            "client.batch_size=10",
            "client.lr=0.1",
        ],
    )
    from fedloom.simulation import Simulation

    sim = Simulation(cfg)
    cohort = list(range(args.cohort))
    dp_sgd = {"max_grad_norm": 1.0, "noise_multiplier": 1.0}
    config = {"round": 1, "seed": 0, "epochs": 1, "batch_size": 10, "lr": 0.1, "dp_sgd": dp_sgd}
    model_blob = Blob.encode(sim.spec, sim.coordinator().codec, sim.init_params)
    tasks = [
        Task(FIT, 1, cid, config, {MODEL: model_blob.digest}, Upload("float32", sim.spec.size))
        for cid in cohort
    ]
    blobs = blob_table(model_blob)

    def fedloom_round(engine: Any) -> float:
        start = time.perf_counter()
        results = list(engine.run(tasks, blobs))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:1]
        return time.perf_counter() - start

    def opacus_round() -> float:
        start = time.perf_counter()
        for cid in cohort:
            client = sim.client(cid)
            model = sim.new_model()
            model.load_state_dict(sim.model.state_dict())
            module = GradSampleModule(model)
            optimizer = DPOptimizer(
                torch.optim.SGD(module.parameters(), lr=0.1),
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                expected_batch_size=10,
            )
            x, y = torch.from_numpy(client.x_train), torch.from_numpy(client.y_train)
            order = torch.randperm(len(x))
            for i in range(0, len(x), 10):
                idx = order[i : i + 10]
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(module(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
        return time.perf_counter() - start

    sequential = SequentialEngine(sim.client)
    vectorized = VectorizedEngine(sim.client, max_memory_mb=cfg.engine.max_memory_mb)
    ways = {
        "Opacus, client by client": opacus_round,
        "fedloom sequential": lambda: fedloom_round(sequential),
        "fedloom vectorized": lambda: fedloom_round(vectorized),
    }
    for way in ways.values():  # warm-up: imports, the vectorized engine's probe
        way()
    times = {
        name: statistics.median(way() for _ in range(args.repeats)) for name, way in ways.items()
    }
    sizes = [len(sim.clients[c].train) for c in cohort]
    print(
        f"DP-SGD, one round: {args.dataset}, {args.cohort} clients of {int(np.mean(sizes))} "
        f"examples, 1 epoch, batch 10, clip 1.0, noise 1.0, MLP 784-64-10, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print("| way | seconds per round | Opacus / this |")
    print("|---|---|---|")
    opacus = times["Opacus, client by client"]
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} | {opacus / seconds:.1f}x |")
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
