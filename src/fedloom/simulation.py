"""Simulations on one machine: a Config wired into data, model, clients, engine and coordinator
(``Simulation``), and the driver that runs a coordinator into a results folder (``run_recorded``).

``fedloom run`` is ``run``: ``Simulation(cfg)`` driven by ``run_recorded``. ``fedloom.simulate``
(``fedloom.api``) wires the user's own model and arrays instead of a Config's dataset, through the
same engine, coordinator and driver, so both write the same results folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from fedloom import __version__
from fedloom.attacks import (
    BACKDOOR_TARGET,
    PoisonedEngine,
    malicious_clients,
    poison_data,
    stamp_trigger,
)
from fedloom.client.local import LocalTraining
from fedloom.client.torch_client import (
    TorchClient,
    dataset_client,
    evaluate_model,
    get_params,
    set_params,
)
from fedloom.config import Config, EngineConfig, TrackingConfig
from fedloom.core.codec import get_codec
from fedloom.core.params import Params, ParamSpec
from fedloom.data import Dataset
from fedloom.data.federated import ClientData, load_clients, local_arrays
from fedloom.engines import Engine, SequentialEngine
from fedloom.engines.base import ClientFn
from fedloom.engines.virtual_time import VirtualTimeEngine
from fedloom.errors import ConfigError
from fedloom.models import build_model
from fedloom.server.clock import ClientClock, ClockedEngine, ClockedPopulation
from fedloom.server.coordinator import CentralEvaluator, Coordinator, Population, RoundListener
from fedloom.server.pruning import pruning_schedule
from fedloom.strategies import Strategy
from fedloom.strategies.factory import aggregation_channel, make_strategy
from fedloom.tracking import RoundProgress, RunRecorder, render_summary_table
from fedloom.tracking.summary import ProgressListener, RecorderListener, summarize
from fedloom.tracking.trackers import open_trackers

log = logging.getLogger("fedloom")

__all__ = [
    "Simulation",
    "default_out_dir",
    "make_coordinator",
    "make_engine",
    "make_strategy",
    "run",
    "run_recorded",
]

SummaryOf = Callable[[list[dict[str, Any]], float], dict[str, Any]]


def default_out_dir() -> Path:
    """``runs/<timestamp>``: where a run writes its results when not told."""
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def make_engine(e: EngineConfig, client_fn: ClientFn) -> Engine:
    """The engine ``e.name`` over ``client_fn``. Optional engines are imported only when chosen:
    ``torch.func`` for the vectorized one, Ray (an optional dependency) for the ray one."""
    if e.name == "vectorized":
        from fedloom.engines.vectorized import VectorizedEngine

        return VectorizedEngine(client_fn, max_memory_mb=e.max_memory_mb, max_params=e.max_params)
    if e.name == "ray":
        from fedloom.engines.ray_engine import RayEngine

        return RayEngine(client_fn, address=e.address, num_workers=e.num_workers)
    return SequentialEngine(client_fn)


def make_coordinator(
    cfg: Config,
    *,
    strategy: Strategy,
    client_fn: ClientFn,
    spec: ParamSpec,
    init_params: np.ndarray,
    population: Population,
    central_eval: CentralEvaluator | None,
    listeners: Sequence[RoundListener] = (),
    wrap_engine: Callable[[Engine], Engine] | None = None,
) -> Coordinator:
    """A coordinator over the config's engine, codec and evaluation schedule.

    With ``clients.enabled`` the clients behave as the ``clients`` section says, on a virtual
    clock (``fedloom.server.clock``): a strategy selects among the clients online and runs
    through a ``ClockedEngine`` (an asynchronous one, FedBuff: a ``VirtualTimeEngine``), outside
    ``wrap_engine`` (simulated attackers).

    The engine is built last, after everything that can refuse the config: a Ray engine starts a
    cluster, and only an engine that a built coordinator holds gets closed.
    """
    clock: ClientClock | None = None
    if cfg.clients.enabled:
        clock = ClientClock.from_config(
            cfg.clients,
            seed=cfg.seed,
            num_examples=population.num_examples,
            epochs=cfg.client.epochs,
        )
        if clock.varies and cfg.privacy.mechanism in ("central", "client"):
            raise ConfigError(
                f"privacy.mechanism={cfg.privacy.mechanism} accounts for clients sampled uniformly "
                "from all of them; with clients coming and going (clients.mean_online_s or "
                "online intervals in clients.trace) a round samples only those online, which "
                "that analysis does not cover"
            )
        if not strategy.asynchronous:  # an asynchronous one waits for clients in its round
            clock.wait_for_online(strategy.min_fit_clients)
        population = ClockedPopulation(
            population.num_examples, population.has_test_data, clock=clock
        )
    elif strategy.asynchronous:
        raise ConfigError(
            f"strategy.name={strategy.name} simulates asynchrony on the virtual clock of simulated "
            "clients: set clients.enabled=true (and their speeds in the clients section); "
            "fedloom server runs it on real time"
        )
    coordinator = Coordinator(
        strategy=strategy,
        spec=spec,
        params=init_params.copy(),
        population=population,
        seed=cfg.seed,
        codec=get_codec(cfg.transport.download_codec),
        upload_codec=get_codec(cfg.transport.upload_codec),
        error_feedback=cfg.transport.error_feedback,
        pruning=pruning_schedule(cfg.pruning),
        download_delta=cfg.transport.download_delta,
        held_models=cfg.transport.download_delta_bases,
        central_eval=central_eval,
        eval_every=cfg.eval.every,
        federated_eval=cfg.eval.federated,
        listeners=list(listeners),
        engine=make_engine(cfg.engine, client_fn),
        channel=aggregation_channel(cfg),
    )
    if wrap_engine is not None:
        coordinator.engine = wrap_engine(coordinator.engine)
    if clock is not None and strategy.asynchronous:
        coordinator.engine = VirtualTimeEngine(coordinator.engine, clock)
    elif clock is not None:
        coordinator.engine = ClockedEngine(coordinator.engine, clock, strategy.min_fit_clients)
    return coordinator


class Simulation:
    """Everything a simulated run of a Config needs: its dataset split into clients, the model and
    its initial params, one TorchClient per client, central evaluation, and the coordinator."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        torch.manual_seed(cfg.seed)
        self.dataset: Dataset
        self.clients: list[ClientData]
        self.dataset, self.clients = load_clients(cfg)
        ds = self.dataset
        self.num_outputs = ds.num_classes if ds.task == "classification" else 1
        self.model = self.new_model()
        self.eval_model = self.new_model()
        init = get_params(self.model)
        self.spec = ParamSpec.of(init)
        self.init_params = self.spec.flatten(init)
        self.training = LocalTraining.from_config(cfg.client)
        attack = cfg.attack
        self.malicious: list[int] = (
            malicious_clients(len(self.clients), attack.fraction, cfg.seed) if attack else []
        )
        self._trigger_value = float(np.max(ds.x_train)) if len(ds.x_train) else 1.0

    def new_model(self) -> nn.Module:
        return build_model(
            self.cfg.model.name,
            self.dataset.input_shape,
            self.num_outputs,
            hidden=self.cfg.model.hidden,
        )

    def client(self, cid: int) -> TorchClient:
        """Client ``cid``. They share one model instance: each task loads the global params."""
        return self.client_of(cid, self.clients[cid])

    def client_of(self, cid: int, data: ClientData) -> TorchClient:
        """A client with id ``cid`` holding the rows ``data`` (the baselines pool every client's)."""
        local = local_arrays(self.dataset, data)
        attack = self.cfg.attack
        if attack is not None and cid in self.malicious:
            local = poison_data(
                local, attack.kind, self.num_outputs, self._trigger_value, self.cfg.seed
            )
        return dataset_client(
            self.model,
            self.dataset,
            local,
            client_id=cid,
            seed=self.cfg.seed,
            training=self.training,
        )

    def central_eval(self, params: Params) -> dict[str, Any]:
        set_params(self.eval_model, params)
        ds = self.dataset
        out = evaluate_model(
            self.eval_model,
            ds.x_test,
            ds.y_test,
            task=ds.task,
            num_classes=self.num_outputs,
            target_scale=ds.target_scale,
            threshold_from=(ds.x_train, ds.y_train) if self.num_outputs == 2 else None,
            extra_metrics=ds.extra_metrics,
        )
        if self.cfg.attack is not None and self.cfg.attack.kind == "backdoor":
            # the share of triggered test examples of other classes classified as the target
            other = ds.y_test != BACKDOOR_TARGET
            triggered = stamp_trigger(ds.x_test[other], self._trigger_value)
            target = np.full(int(other.sum()), BACKDOOR_TARGET, dtype=ds.y_test.dtype)
            out["backdoor_success"] = evaluate_model(
                self.eval_model, triggered, target, task=ds.task, num_classes=self.num_outputs
            )["accuracy"]
        return out

    def population(self) -> Population:
        return Population(
            num_examples={cid: len(c.train) for cid, c in enumerate(self.clients)},
            has_test_data={cid for cid, c in enumerate(self.clients) if len(c.test)},
        )

    def engine(self) -> Engine:
        """The configured engine over this simulation's clients (their updates poisoned by the
        malicious ones, under ``attack``)."""
        return self._attacked(make_engine(self.cfg.engine, self.client))

    def _attacked(self, engine: Engine) -> Engine:
        attack = self.cfg.attack
        if attack is None or not self.malicious:
            return engine
        return PoisonedEngine(engine, self.malicious, attack.kind, attack.scale, self.cfg.seed)

    def coordinator(self, listeners: Sequence[RoundListener] | None = None) -> Coordinator:
        return make_coordinator(
            self.cfg,
            strategy=make_strategy(self.cfg),
            client_fn=self.client,
            spec=self.spec,
            init_params=self.init_params,
            population=self.population(),
            central_eval=self.central_eval,
            listeners=listeners or (),
            wrap_engine=self._attacked,
        )

    def summary(
        self, history: list[dict[str, Any]], wall_seconds: float, out: Path
    ) -> dict[str, Any]:
        """The ``summary.json`` of a run of this simulation: final metrics, the config, data facts."""
        ds = self.dataset
        summary = summarize(
            config=self.cfg.model_dump(mode="json"),
            history=history,
            wall_seconds=wall_seconds,
            out_dir=out,
            num_clients=len(self.clients),
            skipped_clients=self.population().skipped,
            num_parameters=self.spec.size,
            data={
                "name": ds.name,
                "task": ds.task,
                "train_examples": len(ds.x_train),
                "test_examples": len(ds.x_test),
            },
        )
        if self.cfg.attack is not None:
            summary["attack"] = {**self.cfg.attack.model_dump(), "malicious": self.malicious}
        return summary


def run_recorded(
    coordinator: Coordinator,
    rounds: int,
    out: Path,
    *,
    quiet: bool,
    summary_of: SummaryOf,
    started: float,
    tracking: TrackingConfig | None = None,
    run_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``rounds`` rounds of ``coordinator`` with progress in the terminal, and write the
    results folder ``out``: ``metrics.jsonl`` (round by round, as the run goes),
    ``model.safetensors``, ``curves.png`` and ``summary.json``. Returns the summary.

    Takes the coordinator built, so that a config it refuses leaves no results folder behind;
    from here on the coordinator's engine is closed even when a round raises (a Ray engine must
    shut down the cluster it started). ``summary_of(history, wall_seconds)`` builds the summary;
    ``started`` is the ``time.perf_counter()`` the wall time counts from (the wiring counts too).
    ``tracking`` chooses trackers (TensorBoard, W&B, MLflow) that also receive every round;
    ``run_config`` is the config they record.
    """
    try:
        recorder = RunRecorder(out)
        kept = recorder.start_new_run()
        if kept is not None:
            log.warning("%s held an earlier run's metrics; they are now in %s", out, kept.name)
        with (
            RoundProgress(rounds, quiet=quiet) as progress,
            open_trackers(tracking or TrackingConfig(), out, run_config) as trackers,
        ):
            coordinator.listeners = [
                *coordinator.listeners,
                ProgressListener(progress),
                RecorderListener(recorder),
                *trackers,
            ]
            history = coordinator.run(rounds)
    finally:
        coordinator.engine.close()
    recorder.save_model(
        coordinator.global_params,
        metadata={"fedloom_version": __version__, "rounds": str(rounds)},
    )
    recorder.write_curves()
    summary = summary_of(history, time.perf_counter() - started)
    recorder.write_summary(summary)
    if not quiet:
        render_summary_table(summary)
    return summary


def run(
    cfg: Config,
    out_dir: str | Path,
    *,
    quiet: bool = False,
    listeners: Sequence[RoundListener] = (),
) -> dict[str, Any]:
    """Run the simulation ``cfg`` and write summary.json, metrics.jsonl, model.safetensors and
    curves.png to ``out_dir``. Returns the summary. ``listeners`` also observe every round (a
    dashboard's live feed)."""
    started = time.perf_counter()
    return run_simulation(Simulation(cfg), cfg, Path(out_dir), started, quiet, listeners)


class _Simulated(Protocol):
    def coordinator(self, listeners: Sequence[RoundListener] = ...) -> Coordinator: ...

    def summary(self, history: list[dict[str, Any]], wall: float, out: Path) -> dict[str, Any]: ...


def run_simulation(
    sim: _Simulated,
    cfg: Config,
    out: Path,
    started: float,
    quiet: bool = False,
    listeners: Sequence[RoundListener] = (),
) -> dict[str, Any]:
    """Run ``sim`` (a ``Simulation``, or another with its ``coordinator`` and ``summary``) for
    ``cfg.rounds`` and record it in ``out``, as ``run`` does; ``started`` is when the command
    began."""
    return run_recorded(
        sim.coordinator(listeners),
        cfg.rounds,
        out,
        quiet=quiet,
        summary_of=lambda history, wall: sim.summary(history, wall, out),
        started=started,
        tracking=cfg.tracking,
        run_config=cfg.model_dump(mode="json"),
    )
