"""Uplink compression: bytes to reach a target accuracy, for float32 FedAvg and codec chains.

    python bench/compression.py [--dataset fashion_mnist] [--clients 100] [--alpha 0.5]
                                [--fraction 0.1] [--rounds 150] [--target 0.75]
                                [--chains NAME,...] [--png bench/compression.png] [--json PATH]

Every chain trains the same model from the same initialisation on the same Dirichlet(alpha) split
with the same clients per round and the same local work (vectorized engine); only the upload's
codec chain (``transport.upload``) and error feedback (``transport.error_feedback``) differ. For
each chain the table gives the first round whose central test accuracy reaches ``--target``, the
uplink bytes (and all bytes, up and down) spent until then, and the ratio of float32 FedAvg's
uplink bytes to this chain's. Two rows also compress the downlink (``transport.download``), and the
``pruned`` rows prune the global model (``pruning:``, gradual magnitude pruning from round 2 to 20)
so that the model and the updates travel sparse. The PNG plots accuracy against cumulative uplink
bytes.
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

# name -> (upload chain, error feedback[, download chain[, pruning target sparsity[, deltas down]]])
CHAINS: dict[str, tuple[Any, ...]] = {
    "float32": ([], False),
    "float16": (["float16"], False),
    "int8": (["int8"], False),
    "int4": (["int4"], False),
    "qsgd:16": ([{"qsgd": 16}], False),
    "sign + EF": (["sign"], True),
    "topk 10% + int8": ([{"topk": 0.1}, "int8"], False),
    "topk 10% + int8 + EF": ([{"topk": 0.1}, "int8"], True),
    "topk 1% + int8": ([{"topk": 0.01}, "int8"], False),
    "topk 1% + int8 + EF": ([{"topk": 0.01}, "int8"], True),
    "topk 1% + int8 + zstd + EF": ([{"topk": 0.01}, "int8", "zstd"], True),
    "randomk 10%": ([{"randomk": 0.1}], False),
    "int8 both ways": (["int8"], False, ["int8"]),
    "topk 1% + int8 + zstd + EF; int8 down": ([{"topk": 0.01}, "int8", "zstd"], True, ["int8"]),
    "topk 1% + int8 + zstd + EF; topk 10% + int8 deltas down": (
        [{"topk": 0.01}, "int8", "zstd"],
        True,
        [{"topk": 0.1}, "int8"],
        None,
        True,
    ),
    "topk 1% + int8 + zstd + EF; topk 10% + int8 down": (
        [{"topk": 0.01}, "int8", "zstd"],
        True,
        [{"topk": 0.1}, "int8"],
    ),
    "pruned 50%": ([], False, [], 0.5),
    "pruned 75%": ([], False, [], 0.75),
    "pruned 90%": ([], False, [], 0.9),
    "pruned 90% + topk 10% + int8 + EF; int8 down": ([{"topk": 0.1}, "int8"], True, ["int8"], 0.9),
}
PRUNE_START, PRUNE_END = 2, 20
"""The pruning rows' schedule: from 0% at round 2 to the target at round 20, a step every round."""


def run(
    common: list[str],
    chain: list[Any],
    feedback: bool,
    download: list[Any] | None = None,
    sparsity: float | None = None,
    deltas: bool = False,
) -> list[dict[str, Any]]:
    overrides = [*common, f"transport.upload={json.dumps(chain)}"]
    overrides.append(f"transport.error_feedback={str(feedback).lower()}")
    overrides.append(f"transport.download={json.dumps(download or [])}")
    overrides.append(f"transport.download_delta={str(deltas).lower()}")
    if sparsity is not None:
        overrides += [
            "pruning.enabled=true",
            f"pruning.target_sparsity={sparsity}",
            f"pruning.start_round={PRUNE_START}",
            f"pruning.end_round={PRUNE_END}",
        ]
    return run_history(overrides)


def reach(history: list[dict[str, Any]], target: float) -> dict[str, Any]:
    up = down = 0
    for record in history:
        up += record["bytes_up"]
        down += record["bytes_down"]
        if record.get("accuracy", 0.0) >= target:
            return {"round": record["round"], "bytes_up": up, "bytes_total": up + down}
    return {"round": None, "bytes_up": None, "bytes_total": None}


def _mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--hidden", default="[64]")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--target", type=float, default=0.75)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chains", default=",".join(CHAINS))
    p.add_argument(
        "--png",
        default=str(ROOT / "bench" / "compression.png"),
        help="where to write the curves; '' for none",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    names = [n for n in args.chains.split(",") if n]
    if unknown := [n for n in names if n not in CHAINS]:
        p.error(f"unknown chains {unknown}; choose from {list(CHAINS)}")
    common = [
        f"seed={args.seed}",
        f"dataset.name={args.dataset}",
        "partition.kind=dirichlet",
        f"partition.alpha={args.alpha}",
        f"partition.num_clients={args.clients}",
        "model.name=mlp",
        f"model.hidden={args.hidden}",
        f"strategy.fraction_fit={args.fraction}",
        f"rounds={args.rounds}",
        f"client.epochs={args.epochs}",
        "client.batch_size=10",
        f"client.lr={args.lr}",
        "engine.name=vectorized",
    ]
    histories: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        start = time.perf_counter()
        histories[name] = run(common, *CHAINS[name])
        last = histories[name][-1]
        print(
            f"{name}: final accuracy {last['accuracy']:.4f}, {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    base = reach(histories["float32"], args.target) if "float32" in histories else None
    print(f"target accuracy {args.target}; " + " ".join(common))
    print(
        "| upload chain | final acc. | best acc. | round to target | uplink MB to target "
        "| all MB to target | uplink ÷ float32 | mean compression per upload |"
    )
    print("|---|---|---|---|---|---|---|---|")
    summary: dict[str, Any] = {}
    for name, history in histories.items():
        hit = reach(history, args.target)
        accuracies = [r.get("accuracy", math.nan) for r in history]
        ratio = "—"
        if base and base["bytes_up"] and hit["bytes_up"]:
            ratio = f"{base['bytes_up'] / hit['bytes_up']:.1f}x"
        ratios = [r["compression_ratio_up"] for r in history if "compression_ratio_up" in r]
        print(
            f"| {name} | {accuracies[-1]:.3f} | {max(accuracies):.3f} | {hit['round'] or '—'} "
            f"| {_mb(hit['bytes_up'])} | {_mb(hit['bytes_total'])} | {ratio} "
            f"| {sum(ratios) / max(len(ratios), 1):.1f}x |"
        )
        summary[name] = {"reach": hit, "history": history}
    if args.png:
        png = Path(args.png)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (name, history) in enumerate(histories.items()):
            cumulative, up = [], 0
            for record in history:
                up += record["bytes_up"]
                cumulative.append(up / 1e6)
            # ten colours, then the same colours dashed: every line stays distinguishable
            style = "-" if i < 10 else "--"
            ax.plot(cumulative, [r["accuracy"] for r in history], style, label=name, linewidth=1)
        ax.axhline(args.target, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("cumulative uplink MB (log scale)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{args.dataset}, Dirichlet({args.alpha}), {args.clients} clients")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        print(f"curves: {png}")
    if args.json:
        args.json.write_text(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
