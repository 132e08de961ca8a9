"""The Flower row of digits-mlp-100, run with Flower's own virtualenv (see bench/README.md).

Flower's Ray-based simulation (``flwr.simulation.start_simulation``) with a NumPyClient that trains
exactly as fedloom's TorchClient does: the data, partition and initial weights come from the npz that
bench/simulation.py wrote from fedloom's Simulation, and the per-(round, client) seeds and batch
order are the same, so the final accuracy must match fedloom's rows.

    .venv-flower/bin/python bench/flower_digits.py --data digits-mlp-100.npz --rounds 20 --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import time
import warnings
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import torch
from _plain import WorkloadData, accuracy, build, client_seed, local_train
from flwr.client import Client, NumPyClient
from flwr.common import Context, FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.server import ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.simulation import start_simulation

_DATA: dict[str, WorkloadData] = {}


def _data(path: str) -> WorkloadData:
    # Loaded once per Ray worker process, as a Flower user would cache a dataset.
    if path not in _DATA:
        _DATA[path] = WorkloadData.load(path)
    return _DATA[path]


class DigitsClient(NumPyClient):
    def __init__(self, cid: int, data: WorkloadData) -> None:
        self.cid, self.data = cid, data
        self.model = build(data)
        rows = torch.from_numpy(data.client_rows[cid])
        self.x = torch.from_numpy(data.x_train)[rows]
        self.y = torch.from_numpy(data.y_train)[rows]

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return [v.detach().numpy().copy() for v in self.model.state_dict().values()]

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        keys = list(self.model.state_dict())
        self.model.load_state_dict(
            {k: torch.from_numpy(np.array(v)) for k, v in zip(keys, parameters, strict=True)}
        )
        seed = client_seed(self.data.seed, int(config["round"]), self.cid)
        local_train(self.model, self.x, self.y, self.data, seed)
        return self.get_parameters({}), len(self.x), {}


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's aggregation ends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.round_ends: list[float] = []

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        out = super().aggregate_fit(server_round, results, failures)
        self.round_ends.append(time.perf_counter())
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    data = _data(args.data)
    n = len(data.client_rows)
    final: dict[str, float] = {}

    def client_fn(context: Context) -> Client:
        cid = int(context.node_config["partition-id"])
        return DigitsClient(cid, _data(args.data)).to_client()

    def evaluate(
        server_round: int, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]] | None:
        if server_round != args.rounds:  # evaluate once, after the last round, like every row
            return None
        model = build(data)
        keys = list(model.state_dict())
        model.load_state_dict(
            {k: torch.from_numpy(v) for k, v in zip(keys, parameters, strict=True)}
        )
        final["accuracy"] = accuracy(model, data.x_test, data.y_test)
        return 0.0, {"accuracy": final["accuracy"]}

    strategy = TimedFedAvg(
        fraction_fit=data.fraction_fit,
        fraction_evaluate=0.0,
        min_fit_clients=max(1, round(data.fraction_fit * n)),
        min_evaluate_clients=0,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters(list(data.init.values())),
        on_fit_config_fn=lambda r: {"round": r},
        evaluate_fn=evaluate,
    )
    start = time.perf_counter()
    start_simulation(
        client_fn=client_fn,
        num_clients=n,
        config=ServerConfig(num_rounds=args.rounds),
        strategy=strategy,
        client_resources={"num_cpus": 1, "num_gpus": 0.0},
        ray_init_args={
            "include_dashboard": False,
            "num_cpus": args.threads,
            "logging_level": logging.ERROR,
        },
    )
    ends = [start, *strategy.round_ends]
    seconds = [b - a for a, b in itertools.pairwise(ends)]
    out = {"status": "ok", "round_seconds": seconds, "accuracy": final.get("accuracy")}
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
