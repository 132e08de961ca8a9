"""Simulations on one machine: a Config's federation (``fedloom.app``) driven by ``run_recorded``
into a results folder.

``fedloom run`` is ``run``: the federation of the config's app kind, run by ``run_federation``.
``fedloom.simulate`` (``fedloom.api``) builds the federation of the user's own model and arrays
instead, through the same coordinator and driver, so both write the same results folder.
``Simulation`` (a supervised dataset split into simulated clients) and ``make_coordinator`` are
re-exported from where they live, ``fedloom.app.supervised`` and ``fedloom.server.assemble``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fedloom.app import Federation, app_kind
from fedloom.app.supervised import Simulation
from fedloom.config import Config, TrackingConfig
from fedloom.server.assemble import make_coordinator, make_engine
from fedloom.server.coordinator import Coordinator, RoundListener
from fedloom.strategies.factory import make_strategy
from fedloom.tracking import RoundProgress, RunRecorder, render_summary_table
from fedloom.tracking.summary import ProgressListener, RecorderListener
from fedloom.tracking.trackers import open_trackers

log = logging.getLogger("fedloom")

__all__ = [
    "Simulation",
    "default_out_dir",
    "make_coordinator",
    "make_engine",
    "make_strategy",
    "run",
    "run_federation",
    "run_recorded",
]

SummaryOf = Callable[[list[dict[str, Any]], float], dict[str, Any]]


def default_out_dir() -> Path:
    """``runs/<timestamp>``: where a run writes its results when not told."""
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


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
    summary = summary_of(history, time.perf_counter() - started)
    recorder.write_results(coordinator.global_params, summary, rounds)
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
    """Run the simulation ``cfg`` (its app kind's federation: ``fedloom.app.registry``) and write
    summary.json, metrics.jsonl, model.safetensors and curves.png to ``out_dir``. Returns the
    summary. ``listeners`` also observe every round (a dashboard's live feed)."""
    started = time.perf_counter()
    federation = app_kind(cfg).simulation(cfg)
    return run_federation(
        federation, Path(out_dir), quiet=quiet, started=started, listeners=listeners
    )


def run_federation(
    federation: Federation,
    out: Path,
    *,
    quiet: bool = False,
    started: float,
    listeners: Sequence[RoundListener] = (),
) -> dict[str, Any]:
    """Run ``federation`` for its config's rounds and record it in ``out``, as ``run`` does;
    ``started`` is when the command began."""
    cfg = federation.cfg
    return run_recorded(
        federation.coordinator(listeners),
        cfg.rounds,
        out,
        quiet=quiet,
        summary_of=lambda history, wall: federation.summary(history, wall, out),
        started=started,
        tracking=cfg.tracking,
        run_config=federation.config_record,
    )
