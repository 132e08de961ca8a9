"""One row of the benchmark, run in its own process by bench/simulation.py.

Prints ``RESULT {json}`` as its last line: the seconds of each round and the final accuracy. The
parent measures wall time and peak memory from outside.

    python bench/_rows.py ROW --data WORKLOAD.npz --rounds R --threads T --overrides JSON
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from _plain import WorkloadData, accuracy, build, client_seed, local_train, select

ENGINES = ("vectorized", "sequential", "ray")
STRATEGIES = ("fedprox", "scaffold")
FEDLOOM_ROWS = (*ENGINES, *(f"{s}-{e}" for s in STRATEGIES for e in ENGINES))


def fedloom_row(row: str, overrides: list[str], rounds: int, threads: int) -> dict[str, Any]:
    """A fedloom row: ``ENGINE`` (FedAvg) or ``STRATEGY-ENGINE``."""
    from fedloom.config import load_config
    from fedloom.simulation import Simulation

    strategy, _, engine = row.rpartition("-")
    extra = [f"rounds={rounds}", f"engine.name={engine}", f"engine.threads={threads}"]
    if strategy:
        extra.append(f"strategy.name={strategy}")
    if engine == "ray":
        extra.append(f"engine.num_workers={threads}")  # one single-threaded actor per thread
    if engine == "vectorized":
        try:
            import fedloom.engines.vectorized  # noqa: F401
        except Exception as exc:
            return {"status": "unavailable", "error": f"{type(exc).__name__}: {exc}"}
    sim = Simulation(load_config(None, [*overrides, *extra]))
    coordinator = sim.coordinator()
    eval_seconds = 0.0

    def timed_eval(params: dict[str, np.ndarray]) -> dict[str, Any]:
        nonlocal eval_seconds
        start = time.perf_counter()
        out = sim.central_eval(params)
        eval_seconds += time.perf_counter() - start
        return out

    coordinator.central_eval = timed_eval
    try:
        history = coordinator.run(rounds)
    finally:
        coordinator.engine.close()
    failed = sum(r["failed"] + r["rejected"] for r in history)
    seconds = [r["seconds"] for r in history]
    seconds[-1] -= eval_seconds  # the final evaluation is reported apart, as in every row
    return {
        "status": "ok" if not failed else "error",
        "error": f"{failed} client results failed or were rejected" if failed else None,
        "round_seconds": seconds,
        "eval_seconds": eval_seconds,
        "accuracy": history[-1]["accuracy"],
    }


def plain_row(data: WorkloadData, rounds: int) -> dict[str, Any]:
    """FedAvg written out by hand: the same clients, seeds and batch order, no framework."""
    model = build(data)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    eligible = [c for c, rows in enumerate(data.client_rows) if len(rows)]
    local: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    seconds: list[float] = []
    for r in range(1, rounds + 1):
        start = time.perf_counter()
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        weight = 0
        for cid in select(eligible, data.fraction_fit, data.seed, r):
            if cid not in local:
                rows = torch.from_numpy(data.client_rows[cid])
                local[cid] = (x[rows], y[rows])
            xc, yc = local[cid]
            model.load_state_dict(global_state)
            local_train(model, xc, yc, data, client_seed(data.seed, r, cid))
            for k, v in model.state_dict().items():
                total[k].add_(v, alpha=len(xc))
            weight += len(xc)
        global_state = {k: v / weight for k, v in total.items()}
        seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    model.load_state_dict(global_state)
    acc = accuracy(model, data.x_test, data.y_test)
    return {
        "status": "ok",
        "round_seconds": seconds,
        "eval_seconds": time.perf_counter() - start,
        "accuracy": acc,
    }


def central_row(data: WorkloadData, rounds: int, cohort_batch: bool) -> dict[str, Any]:
    """One pass per round over the union of that round's clients' samples, in one model.

    At batch B this is the compute of the federated round with no per-client overhead; at batch
    K x B it is the best a vectorised engine could reach (the same FLOPs in K times fewer steps).
    """
    model = build(data)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    eligible = [c for c, rows in enumerate(data.client_rows) if len(rows)]
    opt = torch.optim.SGD(model.parameters(), lr=data.lr)
    seconds: list[float] = []
    for r in range(1, rounds + 1):
        start = time.perf_counter()
        chosen = select(eligible, data.fraction_fit, data.seed, r)
        rows = torch.from_numpy(np.concatenate([data.client_rows[c] for c in chosen]))
        batch = data.batch_size * (len(chosen) if cohort_batch else 1)
        generator = torch.Generator().manual_seed(client_seed(data.seed, r, 2**31))
        xr, yr = x[rows], y[rows]
        for _ in range(data.epochs):
            order = torch.randperm(len(rows), generator=generator)
            for i in range(0, len(rows), batch):
                idx = order[i : i + batch]
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(xr[idx]), yr[idx]).backward()
                opt.step()
        seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    acc = accuracy(model, data.x_test, data.y_test)
    return {
        "status": "ok",
        "round_seconds": seconds,
        "eval_seconds": time.perf_counter() - start,
        "accuracy": acc,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("row")
    p.add_argument("--data", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--overrides", default="[]")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.row in FEDLOOM_ROWS:
        out = fedloom_row(args.row, json.loads(args.overrides), args.rounds, args.threads)
    elif args.row == "plain":
        out = plain_row(WorkloadData.load(args.data), args.rounds)
    elif args.row in ("central-B", "central-KB"):
        out = central_row(WorkloadData.load(args.data), args.rounds, args.row == "central-KB")
    else:
        raise SystemExit(f"unknown row {args.row!r}")
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
