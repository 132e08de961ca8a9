"""Robust aggregation under attack: final accuracy for each attack kind and share of malicious
clients, with the mean and with every robust aggregator.

    python bench/robustness.py [--attacks KIND,...] [--fractions 0,0.1,0.2,0.3]
                               [--aggregators NAME,...] [--clients 10] [--rounds 10]
                               [--scale 10] [--worst FRACTION] [--json PATH]

Every cell trains the same MLP from the same initialisation on the same IID digits split, with the
same seeded set of malicious clients for a given attack and fraction (``attack.*``); only
``strategy.aggregator`` differs along a row. The attack-free row (fraction 0) is the reference.
Backdoor cells also give the backdoor's success rate (triggered test images of other classes
classified as the target), the number the backdoor attacker wants high.
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

ATTACKS = ("sign_flip", "scale", "gaussian", "label_flip", "backdoor")
AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multikrum", "norm_bound", "centered_clip")


def aggregator_settings(name: str, clients: int, worst_fraction: float) -> list[str]:
    """``strategy.aggregator=name`` with parameters sized for the worst fraction of attackers:
    Krum's f and the trimmed share cover it; the norm bounds sit near an honest update's norm."""
    f = math.ceil(worst_fraction * clients)
    return [
        f"strategy.aggregator={name}",
        f"strategy.krum_f={f}",
        f"strategy.trimmed_mean_beta={min(worst_fraction, 0.49)}",
        "strategy.norm_bound=0.5",
        "strategy.centered_clip_tau=0.5",
        "strategy.centered_clip_iters=3",
    ]


def cell(common: list[str], attack: list[str], aggregator: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    history = run_history([*common, *attack, *aggregator])
    last = history[-1]
    out = {"accuracy": last.get("accuracy"), "seconds": time.perf_counter() - start}
    if "backdoor_success" in last:
        out["backdoor_success"] = last["backdoor_success"]
    out["failed_rounds"] = sum(r["status"] != "ok" for r in history)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--fractions", default="0,0.1,0.2,0.3")
    p.add_argument("--aggregators", default=",".join(AGGREGATORS))
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--scale", type=float, default=10.0, help="attack.scale")
    p.add_argument(
        "--worst",
        type=float,
        default=None,
        help="the malicious share the aggregators' parameters are sized for (default: the "
        "largest of --fractions); give it when running the grid in parts",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    attacks = args.attacks.split(",")
    fractions = [float(f) for f in args.fractions.split(",")]
    aggregators = args.aggregators.split(",")
    common = [
        "dataset.name=digits",
        f"partition.num_clients={args.clients}",
        f"rounds={args.rounds}",
        "client.epochs=1",
        "client.batch_size=16",
        "model.hidden=[64]",
        "seed=0",
    ]
    worst = max(fractions) if args.worst is None else args.worst
    rows: list[dict[str, Any]] = []
    plans = [("none", 0.0)] if 0.0 in fractions else []
    plans += [(a, f) for a in attacks for f in fractions if f > 0]
    for attack, fraction in plans:
        overrides = (
            []
            if attack == "none"
            else [
                f"attack.kind={attack}",
                f"attack.fraction={fraction}",
                f"attack.scale={args.scale}",
            ]
        )
        row: dict[str, Any] = {"attack": attack, "fraction": fraction}
        for name in aggregators:
            row[name] = cell(common, overrides, aggregator_settings(name, args.clients, worst))
            print(f"{attack} {fraction:.0%} {name}: {row[name]}", file=sys.stderr, flush=True)
        rows.append(row)
    print(table(rows, aggregators))
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1)
        )
    return 0


def table(rows: list[dict[str, Any]], aggregators: list[str]) -> str:
    head = "| attack | malicious | " + " | ".join(aggregators) + " |"
    lines = [head, "|---|---|" + "---|" * len(aggregators)]
    for row in rows:
        cells = []
        for name in aggregators:
            c = row[name]
            text = f"{c['accuracy']:.3f}" if c["accuracy"] is not None else "-"
            if "backdoor_success" in c:
                text += f" ({c['backdoor_success']:.2f})"
            cells.append(text)
        lines.append(f"| {row['attack']} | {row['fraction']:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
