"""The character LSTM on Shakespeare: sequential against vectorized engine, side by side.

    python bench/char_lstm_engines.py [--rounds 3] [--threads 1] [--clients 10] [--stride 32]

Same data, initial weights, seeds and batch order on both engines (the accuracy column must
agree). Prints seconds per round (rounds 2..R; round 1 pays for lazy initialisation and the
vectorized engine's probe), the final accuracy, and the vectorized engine's time as a ratio of the
sequential one's. Eagerly the model runs PyTorch's fused LSTM kernel; under the vectorized engine's
``vmap`` it runs the unrolled recurrence (fedloom.models.char_lstm).
"""

from __future__ import annotations

import argparse
import time

from fedloom.config import load_config
from fedloom.simulation import Simulation


def run(engine: str, args: argparse.Namespace) -> tuple[float, float]:
    cfg = load_config(
        "examples/shakespeare_char_lstm.yaml",
        [
            f"engine.name={engine}",
            f"engine.threads={args.threads}",
            f"dataset.max_clients={args.clients}",
            f"dataset.stride={args.stride}",
            f"rounds={args.rounds}",
            f"eval.every={args.rounds}",
        ],
    )
    coordinator = Simulation(cfg).coordinator()
    seconds = []
    try:
        for r in range(1, args.rounds + 1):
            start = time.perf_counter()
            record = coordinator.run_round(r, evaluate=r == args.rounds)
            seconds.append(time.perf_counter() - start)
    finally:
        coordinator.engine.close()
    steady = seconds[1:] or seconds
    return sum(steady) / len(steady), float(record["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--stride", type=int, default=32)
    args = parser.parse_args()
    rows = {engine: run(engine, args) for engine in ("sequential", "vectorized")}
    print("| engine | steady s/round | accuracy | ÷ sequential |")
    print("|---|---|---|---|")
    for engine, (per_round, accuracy) in rows.items():
        ratio = per_round / rows["sequential"][0]
        print(f"| {engine} | {per_round:.2f} | {accuracy:.4f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
