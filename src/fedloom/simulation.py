"""Wires a Config into a running federated simulation: data, partition, model, clients, strategy,
engine, coordinator and the results folder. ``fedloom run`` is a thin shell around ``run``."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedloom import __version__
from fedloom.client.local import LocalTraining
from fedloom.client.torch_client import (
    TorchClient,
    evaluate_model,
    get_params,
    set_params,
)
from fedloom.config import Config
from fedloom.core.codec import get_codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import Result
from fedloom.data import Dataset, load_dataset, partition
from fedloom.engines import Engine, SequentialEngine
from fedloom.errors import ConfigError
from fedloom.models import build_model
from fedloom.optim import make_server_optimizer
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies import FedAvg, FedProx, FedSGD, Scaffold, Strategy
from fedloom.tracking import RoundProgress, RunRecorder, render_summary_table


@dataclass
class ClientData:
    """Row indices of one client's local training and test data in the dataset's training set."""

    train: np.ndarray
    test: np.ndarray


def split_clients(
    parts: list[np.ndarray], test_fraction: float | None, seed: int
) -> list[ClientData]:
    """Hold out ``test_fraction`` of each client's rows (at least one, if it has two or more) as its
    local test split for federated evaluation; None keeps every row for training."""
    out = []
    for cid, rows in enumerate(parts):
        if not test_fraction or len(rows) < 2:
            out.append(ClientData(rows, rows[:0]))
            continue
        order = np.random.default_rng([seed, cid, 7]).permutation(rows)
        n_test = max(1, math.floor(test_fraction * len(rows)))
        out.append(ClientData(np.sort(order[n_test:]), np.sort(order[:n_test])))
    return out


def make_strategy(cfg: Config) -> Strategy:
    s, c = cfg.strategy, cfg.client
    client_config = {
        "epochs": c.epochs,
        "batch_size": c.batch_size,
        "lr": c.lr,
        "optimizer": c.optimizer,
        "momentum": c.momentum,
        "weight_decay": c.weight_decay,
    }
    common: dict[str, Any] = dict(
        fraction_fit=s.fraction_fit,
        min_fit_clients=s.min_fit_clients,
        fraction_evaluate=s.fraction_evaluate,
        client_config=client_config,
        server_optimizer=make_server_optimizer(s.server_optimizer, s.server_lr, s.server_momentum),
    )
    if s.name == "fedsgd":
        return FedSGD(aggregation=s.aggregation, **common)
    if s.aggregation != "mean":
        raise ConfigError(
            f"strategy.aggregation={s.aggregation!r} applies to fedsgd only; "
            f"{s.name} always takes the example-weighted mean"
        )
    if s.name == "fedprox":
        return FedProx(proximal_mu=s.proximal_mu, **common)
    if s.name == "scaffold":
        return Scaffold(**common)
    return FedAvg(**common)


class Simulation:
    """Everything a simulated run needs, built from a Config."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        torch.manual_seed(cfg.seed)
        d = cfg.dataset
        self.dataset: Dataset = load_dataset(
            d.name,
            data_dir=d.data_dir,
            test_fraction=d.test_fraction,
            seed=cfg.seed,
            path=d.path,
            target=d.target,
            group_column=d.group_column,
        )
        ds, p = self.dataset, cfg.partition
        if ds.task == "regression" and p.kind in ("dirichlet", "shards"):
            raise ConfigError(
                f"partition.kind={p.kind!r} needs class labels, but dataset "
                f"{ds.name!r} is a regression task; use iid, quantity or natural"
            )
        num_clients = p.num_clients
        if p.kind == "natural" and ds.groups_train is not None:
            num_clients = len(np.unique(ds.groups_train))  # one client per group
        parts = partition(
            p.kind,
            ds.y_train,
            num_clients,
            seed=cfg.seed,
            alpha=p.alpha,
            shards_per_client=p.shards_per_client,
            quantity_distribution=p.quantity_distribution,
            quantity_sigma=p.quantity_sigma,
            groups=ds.groups_train,
        )
        test_fraction = cfg.eval.client_test_fraction if cfg.eval.federated else None
        self.clients = split_clients(parts, test_fraction, cfg.seed)
        self.num_outputs = ds.num_classes if ds.task == "classification" else 1
        self.model = self.new_model()
        self.eval_model = self.new_model()
        init = get_params(self.model)
        self.spec = ParamSpec.of(init)
        self.init_params = self.spec.flatten(init)
        self.training = LocalTraining(
            epochs=cfg.client.epochs,
            batch_size=cfg.client.batch_size,
            lr=cfg.client.lr,
            optimizer=cfg.client.optimizer,
            momentum=cfg.client.momentum,
            weight_decay=cfg.client.weight_decay,
        )

    def new_model(self) -> nn.Module:
        return build_model(
            self.cfg.model.name,
            self.dataset.input_shape,
            self.num_outputs,
            hidden=self.cfg.model.hidden,
        )

    def client(self, cid: int) -> TorchClient:
        """Client ``cid``. They share one model instance: each task loads the global params."""
        ds, rows = self.dataset, self.clients[cid]
        has_test = len(rows.test) > 0
        return TorchClient(
            self.model,
            ds.x_train[rows.train],
            ds.y_train[rows.train],
            x_test=ds.x_train[rows.test] if has_test else None,
            y_test=ds.y_train[rows.test] if has_test else None,
            task=ds.task,
            num_classes=self.num_outputs,
            target_scale=ds.target_scale,
            client_id=cid,
            seed=self.cfg.seed,
            training=self.training,
        )

    def central_eval(self, params: Params) -> dict[str, Any]:
        set_params(self.eval_model, params)
        ds = self.dataset
        return evaluate_model(
            self.eval_model,
            ds.x_test,
            ds.y_test,
            task=ds.task,
            num_classes=self.num_outputs,
            target_scale=ds.target_scale,
        )

    def population(self) -> Population:
        return Population(
            num_examples={cid: len(c.train) for cid, c in enumerate(self.clients)},
            has_test_data={cid for cid, c in enumerate(self.clients) if len(c.test)},
        )

    def engine(self) -> Engine:
        """The configured engine. Optional engines are imported only when chosen."""
        e = self.cfg.engine
        if e.name == "vectorized":
            from fedloom.engines.vectorized import VectorizedEngine

            return VectorizedEngine(
                self.client, max_memory_mb=e.max_memory_mb, max_params=e.max_params
            )
        if e.name == "ray":
            from fedloom.engines.ray_engine import RayEngine

            return RayEngine(self.client, address=e.address, num_workers=e.num_workers)
        return SequentialEngine(self.client)

    def coordinator(self, listeners: list[Any] | None = None) -> Coordinator:
        cfg = self.cfg
        return Coordinator(
            strategy=make_strategy(cfg),
            engine=self.engine(),
            spec=self.spec,
            params=self.init_params.copy(),
            population=self.population(),
            seed=cfg.seed,
            codec=get_codec(cfg.transport.codec),
            central_eval=self.central_eval,
            eval_every=cfg.eval.every,
            federated_eval=cfg.eval.federated,
            listeners=listeners or [],
        )


class _ProgressListener:
    def __init__(self, progress: RoundProgress) -> None:
        self.progress = progress

    def on_round_start(self, round_num: int, num_clients: int) -> None:
        self.progress.start_round(round_num, num_clients)

    def on_result(self, result: Result) -> None:
        self.progress.advance()

    def on_round_end(self, record: dict[str, Any]) -> None:
        self.progress.end_round(record["round"], record)


class _RecorderListener:
    def __init__(self, recorder: RunRecorder) -> None:
        self.recorder = recorder

    def on_round_start(self, round_num: int, num_clients: int) -> None:
        pass

    def on_result(self, result: Result) -> None:
        pass

    def on_round_end(self, record: dict[str, Any]) -> None:
        self.recorder.log_round(record)


def final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of the last evaluated round (per-class lists included)."""
    bookkeeping = {
        "round",
        "selected",
        "returned",
        "rejected",
        "failed",
        "bytes_up",
        "bytes_down",
        "seconds",
        "status",
        # deployment bookkeeping (fedloom server)
        "dropped",
        "over_selected",
        "connected",
    }
    for record in reversed(history):
        if "loss" in record or any(k.startswith("fed_") for k in record):
            return {k: v for k, v in record.items() if k not in bookkeeping}
    return {}


def summarize(
    cfg: Config, sim: Simulation, history: list[dict[str, Any]], wall_seconds: float, out: Path
) -> dict[str, Any]:
    """The ``summary.json`` of a run: final metrics and run facts. Shared by ``fedloom run`` and
    ``fedloom server``."""
    pop = sim.population()
    return {
        "fedloom_version": __version__,
        "config": cfg.model_dump(mode="json"),
        "final": final_metrics(history),
        "rounds": len(history),
        "failed_rounds": sum(1 for r in history if r["status"] != "ok"),
        "wall_seconds": wall_seconds,
        "bytes_up": sum(r["bytes_up"] for r in history),
        "bytes_down": sum(r["bytes_down"] for r in history),
        "num_clients": len(sim.clients),
        "skipped_clients": pop.skipped,
        "num_parameters": sim.spec.size,
        "dataset": {
            "name": sim.dataset.name,
            "task": sim.dataset.task,
            "train_examples": len(sim.dataset.x_train),
            "test_examples": len(sim.dataset.x_test),
        },
        "out_dir": str(out),
    }


def run(cfg: Config, out_dir: str | Path, *, quiet: bool = False) -> dict[str, Any]:
    """Run the simulation ``cfg`` and write summary.json, metrics.jsonl, model.safetensors and
    curves.png to ``out_dir``. Returns the summary."""
    start = time.perf_counter()
    out = Path(out_dir)
    sim = Simulation(cfg)
    recorder = RunRecorder(out)
    with RoundProgress(cfg.rounds, quiet=quiet) as progress:
        coordinator = sim.coordinator([_ProgressListener(progress), _RecorderListener(recorder)])
        try:
            history = coordinator.run(cfg.rounds)
        finally:  # a Ray engine must shut down the cluster it started, even on error
            coordinator.engine.close()
    recorder.save_model(
        coordinator.global_params,
        metadata={"fedloom_version": __version__, "rounds": str(cfg.rounds)},
    )
    recorder.write_curves()
    summary = summarize(cfg, sim, history, time.perf_counter() - start, out)
    recorder.write_summary(summary)
    if not quiet:
        render_summary_table(summary)
    return summary
