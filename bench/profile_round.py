"""Where a round's time goes: cProfile of the coordinator's round loop, split by phase.

    python bench/profile_round.py [--workload digits-mlp-100] [--engine sequential] [--rounds 10]
                                  [--threads 2] [--top 0]

Round 1 (imports, lazy initialisation) is excluded. Phases are the cumulative time of the functions
that implement them; "client training" is the client's fit minus the parts of it listed below it.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulation import WORKLOADS, fedloom_overrides

# (label, file suffix, function name); the first match of each counts.
PHASES = [
    ("selection (configure_fit)", "strategies/base.py", "configure_fit"),
    ("broadcast encode (GlobalParams.encode)", "core/task.py", "encode"),
    ("engine-side decode of global params", "engines/sequential.py", "_decoded"),
    ("update validation + decode", "server/validation.py", "decode_update"),
    ("aggregation (add)", "aggregators/mean.py", "add"),
    ("aggregation (finish)", "aggregators/mean.py", "finish"),
    ("server optimiser step", "optim/server.py", "step"),
    ("central evaluation", "server/coordinator.py", "evaluate"),
    ("listeners", "simulation.py", "on_result"),
    ("engine: execute_task (all client work)", "engines/base.py", "execute_task"),
    ("  client_fn (build TorchClient)", "simulation.py", "client"),
    ("  TorchClient.fit", "client/torch_client.py", "fit"),
    ("    set_params", "client/torch_client.py", "set_params"),
    ("    get_params", "client/torch_client.py", "get_params"),
    ("    ParamSpec.flatten", "core/params.py", "flatten"),
    ("    torch.manual_seed", "torch/random.py", "manual_seed"),
    ("    make_optimizer", "client/torch_client.py", "make_optimizer"),
    ("    _train (the training loop)", "client/torch_client.py", "_train"),
    ("      model.train()", "torch/nn/modules/module.py", "train"),
    ("      forward", "torch/nn/modules/module.py", "_call_impl"),
    ("      backward", "torch/_tensor.py", "backward"),
    ("      optimizer.step", "torch/optim/optimizer.py", "wrapper"),
    ("      zero_grad", "torch/optim/optimizer.py", "zero_grad"),
    ("  update encode (codec.encode)", "core/codec.py", "encode"),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", default="digits-mlp-100")
    p.add_argument("--engine", default="sequential")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=0, help="also print the top N functions")
    args = p.parse_args()

    from fedloom.config import load_config
    from fedloom.simulation import Simulation

    w = WORKLOADS[args.workload]
    overrides = [
        *fedloom_overrides(w, args.rounds),
        f"rounds={args.rounds}",
        f"engine.name={args.engine}",
        f"engine.threads={args.threads}",
    ]
    coordinator = Simulation(load_config(None, overrides)).coordinator()
    coordinator.run_round(1, evaluate=False)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for r in range(2, args.rounds + 1):
        coordinator.run_round(r, evaluate=r == args.rounds)
    profile.disable()
    wall = time.perf_counter() - start
    coordinator.engine.close()

    stats = pstats.Stats(profile)
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(ct for (f, _, name), (_, _, _, ct, _) in table.items() if name == "run_round")
    per_round = wall / (args.rounds - 1)
    print(
        f"{args.workload}, {args.engine}, {args.threads} threads, rounds 2..{args.rounds}: "
        f"{total:.3f} s in run_round under cProfile ({per_round:.4f} s/round; cProfile inflates "
        "Python-heavy phases)"
    )
    print(f"{'phase':45s} {'seconds':>8s} {'share':>7s}")
    for label, suffix, name in PHASES:
        ct = sum(
            v[3]
            for (f, _, fn), v in table.items()
            if fn == name and f.replace("\\", "/").endswith(suffix)
        )
        print(f"{label:45s} {ct:8.3f} {100 * ct / total:6.1f}%")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
