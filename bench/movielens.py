"""MovieLens: federated vs local-only vs centralised matrix factorisation, and the upload bytes.

Runs ``examples/movielens_mf.yaml`` (or another config) exactly as
``fedloom run CONFIG --baselines local,central`` does (``fedloom.baselines.run_with_baselines``),
into a temporary folder, and prints side by side:

- RMSE (pooled over every held-out rating), hit rate and NDCG at 10, and wall time of the three
  training modes (``fedloom.recommendation``);
- the bytes the federated run's clients uploaded (a bitmask over the movies, then the rows of the
  movies each user rated) against what dense float32 uploads of the item factors and biases
  would take, as a ratio.

    PYTHONPATH=src python bench/movielens.py [CONFIG] [--set KEY=VALUE ...] [--only federated]

``--only federated`` skips the baselines (``--only federated,central`` skips the local one).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fedloom.baselines import run_with_baselines
from fedloom.config import load_config
from fedloom.recommendation import run

METRICS = (("fed_rmse", "RMSE"), ("fed_hit_rate_at_10", "HR@10"), ("fed_ndcg_at_10", "NDCG@10"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default="examples/movielens_mf.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--only", default="local,federated,central")
    a = p.parse_args()
    cfg = load_config(a.config, a.overrides)
    kinds = [k for k in a.only.split(",") if k in ("local", "central")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        if kinds:
            summary = run_with_baselines(cfg, Path(out), kinds, quiet=True)
        else:
            summary = run(cfg, Path(out), quiet=True)
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
        uploads = sum(json.loads(line)["returned"] for line in lines)
    wall = time.perf_counter() - started
    d = summary["dataset"]
    print(
        f"MovieLens (dslabs): {d['users']} users, {d['items']} movies, {d['train_examples']} "
        f"training / {d['test_examples']} held-out ratings; {a.config} {' '.join(a.overrides)}"
    )
    modes = {"local only": summary.get("baselines", {}).get("local"), "federated": summary["final"]}
    modes["centralised"] = summary.get("baselines", {}).get("central")
    baseline_seconds = sum(b["seconds"] for b in summary.get("baselines", {}).values())
    for name, final in modes.items():
        if final is None:
            continue
        cells = "  ".join(f"{label} {final[key]:.4f}" for key, label in METRICS)
        seconds = final.get("seconds", summary["wall_seconds"] - baseline_seconds)
        print(f"{name:12s} {cells}  ({seconds:.1f} s)")
    per_client = 4 * summary["num_parameters"]
    dense = uploads * per_client
    print(
        f"bytes up: {summary['bytes_up']:,} for {uploads} uploads in {summary['rounds']} rounds "
        f"({summary['bytes_up'] / uploads:,.0f} an upload); dense float32 uploads would take "
        f"{dense:,} ({per_client:,} each): {dense / summary['bytes_up']:.1f}x more"
    )
    print(f"total {wall:.1f} s")


if __name__ == "__main__":
    main()
