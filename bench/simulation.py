"""Simulation speed: fedloom's engines against a plain PyTorch loop, centralised training and Flower.

    python bench/simulation.py [--workloads digits-mlp-100,fmnist-cnn-1000,scale-10k]
                               [--rows vectorized,sequential,ray,plain,central-B,central-KB,flower,
                                       fedprox-vectorized,fedprox-sequential,scaffold-vectorized,
                                       scaffold-sequential]
                               [--rounds N] [--threads 2] [--repeat 1] [--json PATH]
                               [--set KEY=VALUE ...] [--baseline SRC]

``--baseline SRC`` adds ``vectorized@baseline`` and ``sequential@baseline`` rows that import
fedloom from another source tree (``git worktree add /tmp/old REV`` and ``--baseline
/tmp/old/src``), so a change is measured against the code before it in the same run.

Every row of every workload runs in a fresh process, so its wall time includes starting Python and
importing its framework, and its peak memory is its own: the resident set summed over the row's
process tree (Ray's and Flower's workers included), polled every 100 ms. PSS (proportional set
size, sampled every second because it is costly to read) is reported beside it because summed RSS
counts shared pages (libtorch, Ray's object store) once per process. All rows use the same data,
partition, initial weights, client seeds, hyperparameters and torch thread count; see
bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ROWS = (
    "vectorized",
    "sequential",
    "ray",
    "plain",
    "central-B",
    "central-KB",
    "flower",
    "fedprox-vectorized",
    "fedprox-sequential",
    "scaffold-vectorized",
    "scaffold-sequential",
)
BASELINE = "@baseline"
STRATEGY_ROWS = ("fedprox", "scaffold")
FLOWER_PYTHON = ROOT / ".venv-flower" / "bin" / "python"


@dataclass(frozen=True)
class Workload:
    name: str
    overrides: tuple[str, ...]
    rounds: int
    flower: bool = False  # bench/flower_digits.py implements this workload


WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "digits-mlp-100",
            (
                "dataset.name=digits",
                "partition.kind=iid",
                "partition.num_clients=100",
                "model.name=mlp",
                "model.hidden=[64]",
                "strategy.fraction_fit=1.0",
            ),
            rounds=20,
            flower=True,
        ),
        Workload(
            "fmnist-cnn-1000",
            (
                "dataset.name=fashion_mnist",
                "partition.kind=shards",
                "partition.num_clients=1000",
                "partition.shards_per_client=2",
                "model.name=cnn",
                "strategy.fraction_fit=0.1",
            ),
            rounds=10,
        ),
        Workload(
            "scale-10k",
            (
                "dataset.name=fashion_mnist",
                "partition.kind=iid",
                "partition.num_clients=10000",
                "model.name=mlp",
                "model.hidden=[32]",
                "strategy.fraction_fit=0.1",
            ),
            rounds=5,
        ),
    )
}
CLIENT = ("client.epochs=1", "client.batch_size=10", "client.lr=0.05", "client.optimizer=sgd")


def fedloom_overrides(w: Workload, rounds: int, extra: Sequence[str] = ()) -> list[str]:
    # Central evaluation once, after the last round, in every row.
    fixed = [*CLIENT, "seed=0", f"eval.every={rounds}", "eval.federated=false"]
    return [*w.overrides, *fixed, *extra]


def prepare(w: Workload, rounds: int, folder: Path, extra: Sequence[str] = ()) -> Path:
    """Write the workload's data, partition and initial weights, as fedloom builds them, to npz."""
    import numpy as np

    from fedloom.config import load_config
    from fedloom.simulation import Simulation

    cfg = load_config(None, fedloom_overrides(w, rounds, extra))
    sim = Simulation(cfg)
    rows = [c.train for c in sim.clients]
    offsets = np.cumsum([0, *map(len, rows)])
    path = folder / f"{w.name}.npz"
    arrays: dict[str, Any] = {
        "x_train": sim.dataset.x_train,
        "y_train": sim.dataset.y_train,
        "x_test": sim.dataset.x_test,
        "y_test": sim.dataset.y_test,
        "client_rows": np.concatenate(rows).astype(np.int64),
        "client_offsets": offsets,
        "meta:model": np.array(cfg.model.name),
        "meta:hidden": np.array(cfg.model.hidden),
        "meta:num_classes": np.array(sim.num_outputs),
        "meta:seed": np.array(cfg.seed),
        "meta:fraction_fit": np.array(cfg.strategy.fraction_fit),
        "meta:epochs": np.array(cfg.client.epochs),
        "meta:batch_size": np.array(cfg.client.batch_size),
        "meta:lr": np.array(cfg.client.lr),
    }
    for k, v in sim.spec.unflatten(sim.init_params).items():
        arrays[f"param:{k}"] = v
    np.savez(path, **arrays)
    return path


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def _pss(procs: list[psutil.Process]) -> int:
    # Reads /proc/PID/smaps_rollup: ~10 ms a process, so it is sampled ten times less often.
    total = 0
    for p in procs:
        try:
            mem = p.memory_full_info()
        except psutil.Error:
            continue
        total += getattr(mem, "pss", mem.rss)
    return total


def run_row(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one row; its result, wall seconds and peak memory of its process tree."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        proc = psutil.Process(child.pid)
        peak_rss = peak_pss = 0
        polls = 0
        while child.poll() is None:
            procs = _tree(proc)
            peak_rss = max(peak_rss, _rss(procs))
            if polls % 10 == 5:
                peak_pss = max(peak_pss, _pss(procs))
            polls += 1
            if time.perf_counter() - start > timeout:
                child.kill()
                break
            time.sleep(0.1)
        child.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if child.returncode != 0 or not lines:
        tail = "\n".join(text.strip().splitlines()[-5:])
        return {"status": "error", "error": f"exit code {child.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    result.update(wall_s=wall, peak_rss_mb=peak_rss / 2**20, peak_pss_mb=peak_pss / 2**20 or None)
    secs = result.get("round_seconds") or []
    if secs:
        steady = secs[1:] or secs
        result["steady_s_per_round"] = sum(steady) / len(steady)
    return result


def row_command(
    row: str, w: Workload, data: Path, rounds: int, threads: int, extra: Sequence[str] = ()
) -> list[str] | str:
    """The row's command line, or why it cannot run here."""
    if row == "flower":
        if not w.flower:
            return "no Flower implementation of this workload"
        if not FLOWER_PYTHON.exists():
            return f"Flower is not installed ({FLOWER_PYTHON}; see bench/README.md)"
        script = [str(FLOWER_PYTHON), str(BENCH / "flower_digits.py")]
        return [*script, "--data", str(data), "--rounds", str(rounds), "--threads", str(threads)]
    overrides = json.dumps(fedloom_overrides(w, rounds, extra))
    return [
        sys.executable,
        str(BENCH / "_rows.py"),
        row.removesuffix(BASELINE),
        "--data",
        str(data),
        "--rounds",
        str(rounds),
        "--threads",
        str(threads),
        "--overrides",
        overrides,
    ]


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def render(results: list[dict[str, Any]]) -> str:
    """A markdown table; ratios are this row's steady s/round over the reference row's."""
    head = (
        "| workload | row | wall s | steady s/round | accuracy | peak RSS MB | peak PSS MB "
        "| ÷ sequential | ÷ Flower | ÷ central B | ÷ central K×B |"
    )
    lines = [head, "|" + "---|" * 11]
    by = {(r["workload"], r["row"]): r for r in results}
    for r in results:

        def ratio(ref: str, r: dict[str, Any] = r) -> str:
            if ref == "sequential":  # each strategy (and the baseline) against its own sequential
                strategy = r["row"].removesuffix(BASELINE).rpartition("-")[0]
                ref = (f"{strategy}-" if strategy in STRATEGY_ROWS else "") + ref
                ref += BASELINE if r["row"].endswith(BASELINE) else ""
            other = by.get((r["workload"], ref), {}).get("steady_s_per_round")
            mine = r.get("steady_s_per_round")
            return f"{mine / other:.2f}" if mine and other else "—"

        if r["status"] != "ok":
            why = (r.get("error") or r["status"]).replace("\n", " ").replace("|", "/")[:120]
            lines.append(f"| {r['workload']} | {r['row']} | {r['status']}: {why} |" + " |" * 8)
            continue
        cells = [
            r["workload"],
            r["row"],
            _fmt(r["wall_s"]),
            _fmt(r["steady_s_per_round"]),
            _fmt(r["accuracy"], 4),
            _fmt(r["peak_rss_mb"], 4),
            _fmt(r["peak_pss_mb"], 4),
            ratio("sequential"),
            ratio("flower"),
            ratio("central-B"),
            ratio("central-KB"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--rounds", type=int, help="override every workload's number of rounds")
    p.add_argument("--threads", type=int, default=2, help="torch threads (Ray/Flower: workers)")
    p.add_argument(
        "--timeout", type=float, default=1800, help="seconds per row before it is killed"
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--baseline",
        type=Path,
        help="a fedloom source folder (SRC with fedloom/ in it) to also run vectorized and "
        "sequential from, as rows vectorized@baseline and sequential@baseline",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per row; the fastest is shown")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fedloom config override for every workload and row (e.g. strategy.fraction_fit=0.01)",
    )
    args = p.parse_args(argv)
    names = [n for n in args.workloads.split(",") if n]
    if missing := [n for n in names if n not in WORKLOADS]:
        p.error(f"unknown workloads {missing}; choose from {list(WORKLOADS)}")
    workloads = [WORKLOADS[n] for n in names]
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    if args.baseline is not None:
        if not (args.baseline / "fedloom" / "__init__.py").is_file():
            p.error(f"--baseline {args.baseline}: no fedloom package in that folder")
        rows += ["vectorized" + BASELINE, "sequential" + BASELINE]

    env = dict(os.environ)
    # Nothing phones home; Ray stays on this machine's loopback address.
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        FLWR_TELEMETRY_ENABLED="0",
        PYTHONPATH=os.pathsep.join([str(BENCH), str(ROOT / "src")]),
    )
    env.pop("RAY_ADDRESS", None)
    env.pop("OMP_NUM_THREADS", None)  # each row sets its thread count itself
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedloom-bench-") as tmp:
        for w in workloads:
            rounds = args.rounds or w.rounds
            print(f"[{w.name}] preparing data ...", file=sys.stderr, flush=True)
            data = prepare(w, rounds, Path(tmp), args.set)
            for row in rows:
                cmd = row_command(row, w, data, rounds, args.threads, args.set)
                print(f"[{w.name}] {row} ...", file=sys.stderr, flush=True)
                row_env = env
                if row.endswith(BASELINE):
                    src = os.pathsep.join([str(BENCH), str(args.baseline)])
                    row_env = {**env, "PYTHONPATH": src}
                if isinstance(cmd, str):
                    res: dict[str, Any] = {"status": "unavailable", "error": cmd}
                else:
                    # Best of --repeat runs: on a shared machine the fastest run is the one least
                    # disturbed by other processes. Every run is kept in the JSON.
                    runs = [run_row(cmd, row_env, args.timeout) for _ in range(args.repeat)]
                    ok = [r for r in runs if "steady_s_per_round" in r]
                    res = min(ok, key=lambda r: r["steady_s_per_round"]) if ok else runs[0]
                    res = {**res, "runs": runs} if args.repeat > 1 else res
                label = w.name + (f" [{', '.join(args.set)}]" if args.set else "")
                res.update(workload=label, row=row, rounds=rounds, overrides=args.set)
                results.append(res)
                done = (
                    f"{res['steady_s_per_round']:.4f} s/round"
                    if "steady_s_per_round" in res
                    else ""
                )
                print(f"[{w.name}] {row}: {res['status']} {done}", file=sys.stderr, flush=True)
    table = render(results)
    print(table)
    load = os.getloadavg()
    print(f"load average at the end (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        meta = {
            "command": " ".join(["python", "bench/simulation.py", *(argv or sys.argv[1:])]),
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "loadavg_at_end": os.getloadavg(),
        }
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
