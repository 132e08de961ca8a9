"""Flower's SecAgg+ against Flower's plaintext FedAvg round, run with Flower's own virtualenv.

    .venv-flower/bin/python bench/flower_secagg.py --mode secagg_plus [--clients 100]
        [--hidden 1300] [--rounds 3] [--num-shares 21] [--threshold 11] [--max-weight 1000]
        [--seed 0] [--cpus 2]

``bench/secagg.py --modes ...,flower-plain,flower-secagg_plus`` runs this script in a subprocess
(see bench/README.md, "Secure aggregation"). Flower 1.x's Message API:
``flwr.simulation.run_simulation`` with ``--clients`` SuperNodes on its Ray backend, a
``ServerApp`` running ``DefaultWorkflow`` with Flower's ``FedAvg`` (every client every round, no
evaluation), and for ``secagg_plus`` ``SecAggPlusWorkflow`` as the fit workflow and
``flwr.client.mod.secaggplus_mod`` on the ``ClientApp``.

The clients train nothing: ``fit`` returns a fixed update of the MLP 64-HIDDEN-10's shapes
(97,510 float32 values at ``--hidden 1300``), N(0, 0.1^2) from numpy's PCG64 seeded by
(seed, client), the vector ``bench/secagg.py --no-train`` gives fedloom's clients, so the rows time
the framework's round and the aggregation protocol only.

SecAgg+ settings: ``clipping_range``, ``quantization_range``, ``modulus_range`` and
``max_weight`` are Flower's defaults (8.0, 2^22, 2^32, 1000). ``num_shares`` and
``reconstruction_threshold`` have no default in Flower; the defaults here match fedloom's
defaults at 100 clients (k = 20 neighbours plus the client's own share: 21 shares, t = 11), so
both protocols do the same secret sharing over the same kind of graph (the clients on a ring in a
random order, each joined to the k/2 nearest on either side).

Prints one line ``RESULT {json}``: seconds of each round (``configure_fit`` to the end of
``aggregate_fit``), the time of each SecAgg+ stage per round, and per round the bytes of every
message the ServerApp sent (down) and received (up), each serialised with Flower's own protobuf
(``flwr.common.serde.message_to_proto``): what a deployment's gRPC messages carry, framing aside;
and ``max_error``, the largest difference between the last round's aggregate (FedAvg of weights:
the clients' updates are the weights they return) and the exact mean of the fixed updates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Context,
    FitIns,
    FitRes,
    Message,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.serde import message_to_proto
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.simulation import run_simulation

STAGES = {  # Flower's stage -> the name bench/secagg.py gives fedloom's stage
    "setup_stage": "advertise",
    "share_keys_stage": "share",
    "collect_masked_vectors_stage": "masked",
    "unmask_stage": "unmask",
}


def shapes(hidden: int) -> list[tuple[int, ...]]:
    """The MLP 64-HIDDEN-10's parameter shapes, in torch's state_dict order."""
    return [(hidden, 64), (hidden,), (10, hidden), (10,)]


def fixed_update(cid: int, hidden: int, seed: int) -> list[np.ndarray]:
    """Client ``cid``'s update: bench/secagg.py's ``fixed_update``, split into the MLP's arrays."""
    sizes = [int(np.prod(s)) for s in shapes(hidden)]
    rng = np.random.default_rng([seed, cid])
    flat = (rng.standard_normal(sum(sizes)) * 0.1).astype(np.float32)
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return [p.reshape(s) for p, s in zip(parts, shapes(hidden), strict=True)]


class FixedClient(NumPyClient):
    def __init__(self, update: list[np.ndarray]) -> None:
        self.update = update

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        return [a.copy() for a in self.update], 1, {}


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's fit starts (configure_fit) and ends (aggregate_fit)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.starts: dict[int, float] = {}
        self.ends: dict[int, float] = {}
        self.last: list[np.ndarray] = []

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.starts[server_round] = time.perf_counter()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        out = super().aggregate_fit(server_round, results, failures)
        self.ends[server_round] = time.perf_counter()
        if out[0] is not None:
            self.last = parameters_to_ndarrays(out[0])
        return out


class TimedSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAggPlusWorkflow, unchanged, with each stage's seconds noted per round."""

    def __init__(self, stage_seconds: dict[str, list[float]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, label in STAGES.items():
            setattr(self, name, self._timed(getattr(self, name), stage_seconds[label]))

    @staticmethod
    def _timed(stage: Callable[..., bool], into: list[float]) -> Callable[..., bool]:
        def run(*args: Any) -> bool:
            start = time.perf_counter()
            try:
                return stage(*args)
            finally:
                into.append(time.perf_counter() - start)

        return run


class CountingGrid:
    """The ServerApp's Grid, counting the serialised bytes of every message it sends and gets."""

    def __init__(self, grid: Grid, bytes_by_round: dict[str, dict[str, int]]) -> None:
        self._grid = grid
        self._bytes = bytes_by_round

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _count(self, messages: Iterable[Message], direction: str) -> list[Message]:
        messages = list(messages)
        for m in messages:
            group = m.metadata.group_id or "init"
            self._bytes[group][direction] += message_to_proto(m).ByteSize()
        return messages

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = self._count(messages, "down")
        return self._count(self._grid.send_and_receive(sent, timeout=timeout), "up")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("plain", "secagg_plus"), required=True)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--hidden", type=int, default=1300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-shares", type=int, default=21)
    p.add_argument("--threshold", type=int, default=11)
    p.add_argument("--max-weight", type=float, default=1000.0, help="Flower's default: 1000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=2, help="Ray CPUs: clients run in parallel")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)

    stage_seconds: dict[str, list[float]] = defaultdict(list)
    bytes_by_round: dict[str, dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0})
    init = [np.zeros(s, np.float32) for s in shapes(args.hidden)]
    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=args.clients,
        min_available_clients=args.clients,
        initial_parameters=ndarrays_to_parameters(init),
    )
    if args.mode == "secagg_plus":
        fit_workflow = TimedSecAggPlus(
            stage_seconds,
            num_shares=args.num_shares,
            reconstruction_threshold=args.threshold,
            max_weight=args.max_weight,
        )
        settings = {
            k: getattr(fit_workflow, k)
            for k in (
                "num_shares",
                "reconstruction_threshold",
                "max_weight",
                "clipping_range",
                "quantization_range",
                "modulus_range",
            )
        }
        workflow = DefaultWorkflow(fit_workflow=fit_workflow)
    else:
        settings = {}
        workflow = DefaultWorkflow()

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=args.rounds), strategy=strategy
        )
        workflow(CountingGrid(grid, bytes_by_round), legacy)  # type: ignore[arg-type]

    def client_fn(context: Context) -> Any:
        cid = int(context.node_config["partition-id"])
        return FixedClient(fixed_update(cid, args.hidden, args.seed)).to_client()

    mods = [secaggplus_mod] if args.mode == "secagg_plus" else []
    client_app = ClientApp(client_fn=client_fn, mods=mods)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": args.cpus,
                "include_dashboard": False,
                "logging_level": logging.ERROR,
            },
        },
    )
    rounds = sorted(strategy.ends)
    updates = [fixed_update(cid, args.hidden, args.seed) for cid in range(args.clients)]
    mean = [np.mean([u[i].astype(np.float64) for u in updates], axis=0) for i in range(len(init))]
    error = max(float(np.max(np.abs(a - m))) for a, m in zip(strategy.last, mean, strict=True))
    import flwr

    out = {
        "status": "ok" if len(rounds) == args.rounds else "incomplete",
        "flower": flwr.__version__,
        "params": sum(a.size for a in init),
        "round_seconds": [strategy.ends[r] - strategy.starts[r] for r in rounds],
        "stage_seconds": dict(stage_seconds),
        "bytes": [bytes_by_round[str(r)] for r in rounds],
        "settings": settings,
        "max_error": error,
        "dtypes": sorted({str(a.dtype) for a in strategy.last}),
    }
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
