"""Secure aggregation against the plaintext round, side by side in one run.

    python bench/secagg.py [--clients 100] [--hidden 1300] [--rounds 3] [--engines vectorized]
                           [--modes plain,secagg_plus,secagg,flower-plain,flower-secagg_plus]
                           [--no-train] [--flower-cpus 2] [--json PATH]

Every row runs the same FedAvg rounds: digits split IID over ``--clients`` clients, every client
every round, an MLP 64-HIDDEN-10 (``--hidden 1300``: 97,510 parameters, the issue's ~100,000),
one local epoch at batch 32. ``plain`` sends float32 updates in the clear (inside TLS in a
deployment); ``secagg_plus`` and ``secagg`` run the four-stage protocol (defaults: clip 8, 22
quantisation bits in Z_2^32, threshold 0.5; SecAgg+ with k = 3 log2 n rounded up to even).

Columns: seconds per round (the median of rounds 2..R; round 1 pays for lazy initialisation), the
time of each protocol stage, bytes per client per round (up: the masked input and the protocol's
keys, shares and reveals; down: the model and the stage messages), and the ratio of each to
``plain``. Accuracy after the last round shows the quantised sum trains the same model.

``--no-train``: every client returns a fixed pseudo-random update (N(0, 0.1^2), seeded by
(seed, client)) instead of training, so the round time is the framework's and the protocol's;
there is no accuracy. ``flower-plain`` and ``flower-secagg_plus`` are Flower's FedAvg round and
Flower's SecAgg+ on the same setting with such clients (bench/flower_secagg.py, run with
``.venv-flower/bin/python`` in a subprocess; shown as unavailable without that virtualenv); their
``× plain`` is against ``flower-plain``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
FLOWER_PYTHON = ROOT / ".venv-flower" / "bin" / "python"
FLOWER_INSTALL = 'python3 -m venv .venv-flower && .venv-flower/bin/pip install "flwr[simulation]"'


def fixed_update(cid: int, size: int, seed: int) -> np.ndarray:
    """Client ``cid``'s update under ``--no-train``: N(0, 0.1^2) float32 from PCG64 seeded by
    (seed, cid), the same vector bench/flower_secagg.py's clients return."""
    rng = np.random.default_rng([seed, cid])
    return (rng.standard_normal(size) * 0.1).astype(np.float32)


class FixedUpdateClient:
    """A client that trains nothing: ``fit`` returns its fixed update (``--no-train``), so the
    round's time is the framework's and the aggregation protocol's."""

    def __init__(self, cid: int, size: int, seed: int) -> None:
        self.update = fixed_update(cid, size, seed)

    def fit(self, params: Any, config: Any, context: Any) -> Any:
        from fedloom.client.base import FitResult

        return FitResult(update=self.update.copy(), num_examples=1)

    def evaluate(self, params: Any, config: Any, context: Any) -> Any:
        from fedloom.client.base import EvalResult

        return EvalResult(loss=0.0, num_examples=1)


def run_row(mode: str, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    if mode.startswith("flower-"):
        return flower_row(mode, args)
    from fedloom.config import load_config
    from fedloom.server.coordinator import Population
    from fedloom.simulation import Simulation, make_coordinator
    from fedloom.strategies.factory import make_strategy

    overrides = [
        f"partition.num_clients={args.clients}",
        f"model.hidden=[{args.hidden}]",
        f"rounds={args.rounds}",
        f"engine.name={engine}",
        "client.epochs=1",
        "client.batch_size=32",
        f"seed={args.seed}",
    ]
    if mode != "plain":
        overrides += ["secure_aggregation.enabled=true", f"secure_aggregation.mode={mode}"]
    sim = Simulation(load_config(None, overrides))
    updates: dict[int, FixedUpdateClient] = {}
    if args.no_train:
        size = sim.spec.size
        updates = {cid: FixedUpdateClient(cid, size, args.seed) for cid in range(args.clients)}
        coordinator = make_coordinator(
            sim.cfg,
            strategy=make_strategy(sim.cfg),
            client_fn=updates.__getitem__,
            spec=sim.spec,
            init_params=sim.init_params,
            population=Population(num_examples=dict.fromkeys(updates, 1)),
            central_eval=None,
        )
    else:
        coordinator = sim.coordinator()
    error = None
    try:
        if args.no_train:  # the last round's step against the exact mean of the fixed updates
            coordinator.run(args.rounds - 1)
            before = coordinator.params.astype(np.float64)
            history = coordinator.run(args.rounds, start_round=args.rounds)
            mean = np.mean([u.update.astype(np.float64) for u in updates.values()], axis=0)
            error = float(np.max(np.abs(coordinator.params - before - mean)))
        else:
            history = coordinator.run(args.rounds)
    finally:
        coordinator.engine.close()
    steady = history[1:] or history
    n = args.clients

    def per_client(record: dict[str, Any], key: str) -> float:
        return float(record.get(key, 0.0)) / n

    row: dict[str, Any] = {
        "mode": mode,
        "engine": engine + ("/no-train" if args.no_train else ""),
        "params": sim.spec.size,
        "seconds": statistics.median(r["seconds"] for r in steady),
        "up_bytes": statistics.median(per_client(r, "bytes_up") for r in steady),
        # stage messages travel in the task configs, which bytes_down (blobs) does not count
        "down_bytes": statistics.median(
            per_client(r, "bytes_down") + per_client(r, "secagg_bytes_down") for r in steady
        ),
        "accuracy": history[-1].get("accuracy"),
        "max_error": error,
        "status": [r["status"] for r in history],
    }
    if mode != "plain":
        for stage in ("advertise", "share", "masked", "unmask"):
            row[f"s_{stage}"] = statistics.median(r[f"secagg_seconds_{stage}"] for r in steady)
        row["neighbours"] = history[-1]["secagg_neighbours"]
        row["threshold"] = history[-1]["secagg_threshold"]
    return row


def flower_row(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """A row of Flower's own round (``flower-plain``, ``flower-secagg_plus``): bench/flower_secagg.py
    with Flower's virtualenv, in a subprocess; its clients train nothing, as under ``--no-train``.
    Flower's SecAgg+ gets fedloom's default k and t for the cohort (``num_shares`` = k + 1: Flower
    counts the client's own share)."""
    from fedloom.secagg.graph import default_neighbours, threshold_of

    flower_mode = mode.removeprefix("flower-")
    row: dict[str, Any] = {"mode": flower_mode, "engine": "flower/no-train"}
    if not FLOWER_PYTHON.exists():
        return {**row, "unavailable": f"create .venv-flower with: {FLOWER_INSTALL}"}
    k = default_neighbours(args.clients)
    shares, t = k + 1, threshold_of(k + 1, 0.5)
    command = [
        str(FLOWER_PYTHON),
        str(ROOT / "bench" / "flower_secagg.py"),
        f"--mode={flower_mode}",
        f"--clients={args.clients}",
        f"--hidden={args.hidden}",
        f"--rounds={args.rounds}",
        f"--seed={args.seed}",
        f"--num-shares={shares}",
        f"--threshold={t}",
        f"--cpus={args.flower_cpus}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = " / ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        return {**row, "unavailable": f"exit code {done.returncode}: {tail}"}
    result = json.loads(lines[-1].removeprefix("RESULT "))
    if result["status"] != "ok":
        return {**row, "unavailable": f"Flower's run did not finish: {result}"}
    steady = slice(1, None) if args.rounds > 1 else slice(None)
    n = args.clients
    row.update(
        flower=result["flower"],
        params=result["params"],
        seconds=statistics.median(result["round_seconds"][steady]),
        up_bytes=statistics.median(b["up"] / n for b in result["bytes"][steady]),
        down_bytes=statistics.median(b["down"] / n for b in result["bytes"][steady]),
        accuracy=None,
        max_error=result["max_error"],
        settings=result["settings"],
    )
    if flower_mode == "secagg_plus":
        for stage in STAGES:
            row[f"s_{stage}"] = statistics.median(result["stage_seconds"][stage][steady])
        row["neighbours"], row["threshold"] = shares - 1, t
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| engine | mode | k | t | s/round | × plain | advertise | share | masked | unmask "
        "| up B/client | down B/client | bytes × plain | accuracy | max error |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    out = [head]
    plain = {r["engine"]: r for r in rows if r["mode"] == "plain" and "unavailable" not in r}
    for r in rows:
        if "unavailable" in r:
            out.append(f"| {r['engine']} | {r['mode']} | unavailable: {r['unavailable']} |")
            continue
        base = plain.get(r["engine"], r)
        accuracy = "—" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        error = "—" if r.get("max_error") is None else f"{r['max_error']:.2g}"
        failed = [i + 1 for i, s in enumerate(r.get("status", [])) if s != "ok"]
        mode = r["mode"] + (f" (rounds {failed} FAILED)" if failed else "")
        total = r["up_bytes"] + r["down_bytes"]
        stages = [f"{r[f's_{s}']:.3f}" if f"s_{s}" in r else "" for s in STAGES]
        out.append(
            f"| {r['engine']} | {mode} | {int(r.get('neighbours', 0)) or ''} "
            f"| {int(r.get('threshold', 0)) or ''} | {r['seconds']:.2f} "
            f"| {r['seconds'] / base['seconds']:.2f} | {' | '.join(stages)} "
            f"| {r['up_bytes']:,.0f} | {r['down_bytes']:,.0f} "
            f"| {total / (base['up_bytes'] + base['down_bytes']):.3f} | {accuracy} | {error} |"
        )
    return "\n".join(out)


STAGES = ("advertise", "share", "masked", "unmask")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--hidden", type=int, default=1300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engines", default="vectorized")
    p.add_argument("--modes", default="plain,secagg_plus,secagg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-train",
        action="store_true",
        help="clients return a fixed pseudo-random update instead of training (as Flower's rows)",
    )
    p.add_argument("--flower-cpus", type=int, default=2, help="Ray CPUs of the Flower rows")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    ours = [m for m in modes if not m.startswith("flower-")]
    jobs = [(m, e) for e in args.engines.split(",") for m in ours]
    jobs += [(m, "") for m in modes if m.startswith("flower-")]
    rows = []
    for mode, engine in jobs:
        rows.append(run_row(mode, engine, args))
        print(json.dumps(rows[-1]), flush=True)
    params = next((r["params"] for r in rows if "params" in r), 0)
    print(f"\n{params:,} parameters, {args.clients} clients, every client every round\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
