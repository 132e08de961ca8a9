"""The "why federate" baselines of a simulation: the same model, trained with the same budget, by
each client alone (``local``) and on every client's data pooled in one place (``central``).

Both baselines run the federated pipeline itself on a different population, so nothing but the
data each model sees changes: the same initial params, strategy, local optimiser, epochs, batch
size, learning rate, rounds and central test set.

- ``local``: every client with training data, alone: ``rounds`` rounds of a federation of one
  (its model after ``rounds x epochs`` local epochs, the optimiser restarting each round as in the
  federated run). Each client's final model is evaluated on the central test set, and the metrics
  are averaged over clients (unweighted; a metric undefined for some clients, such as AUC, is
  averaged over the others). This is what a client gets without federating.
- ``central``: one client holding the union of every client's rows (the upper bound a federation
  tries to reach without moving the data).

Every client trains in every round of a baseline (``fraction_fit`` 1): with ``fraction_fit < 1``
a baseline client does ``1 / fraction_fit`` times the federated run's work per client. Only the
final round is evaluated, centrally; the sequential engine runs them (one client at a time).
``run_with_baselines`` writes them into ``summary.json`` as ``baselines: {local: ..., central:
...}`` beside the federated ``final`` metrics (``fedloom run --baselines local,central``).
MovieLens (``dataset.name: movielens``) has its own two, evaluated on the users' held-out ratings
as its federated run is (``fedloom.recommendation``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fedloom.config import Config, EngineConfig, EvalConfig
from fedloom.data.federated import ClientData
from fedloom.engines.base import ClientFn
from fedloom.errors import ConfigError
from fedloom.recommendation import RecommendationSimulation
from fedloom.server.coordinator import Population
from fedloom.simulation import Simulation, make_coordinator, make_strategy, run_recorded
from fedloom.tracking.summary import final_metrics

__all__ = [
    "BASELINE_KINDS",
    "baseline_config",
    "parse_baselines",
    "pooled",
    "render_baselines",
    "run_baseline",
    "run_with_baselines",
]

BASELINE_KINDS = ("local", "central")


def parse_baselines(text: str | Sequence[str]) -> list[str]:
    """``"local,central"`` (or a list) -> ``["local", "central"]``, refusing unknown kinds."""
    items = text.split(",") if isinstance(text, str) else list(text)
    kinds = [item.strip() for item in items if item.strip()]
    unknown = [kind for kind in kinds if kind not in BASELINE_KINDS]
    if unknown or not kinds:
        raise ConfigError(
            f"--baselines: got {text!r}; give a comma-separated list of {', '.join(BASELINE_KINDS)}"
        )
    return list(dict.fromkeys(kinds))


def baseline_config(cfg: Config) -> Config:
    """``cfg`` for a baseline: every client every round, final central evaluation only, the
    sequential engine."""
    return cfg.model_copy(
        update={
            "strategy": cfg.strategy.model_copy(update={"fraction_fit": 1.0, "min_fit_clients": 1}),
            "eval": EvalConfig(every=cfg.rounds, federated=False),
            "engine": EngineConfig(name="sequential", threads=cfg.engine.threads),
        }
    )


def pooled(clients: Sequence[ClientData]) -> ClientData:
    """One client holding every client's training and test rows."""
    train = [c.train for c in clients]
    test = [c.test for c in clients]
    return ClientData(np.sort(np.concatenate(train)), np.sort(np.concatenate(test)))


def _train_alone(
    sim: Simulation, cfg: Config, cid: int, num_examples: int, client_fn: ClientFn
) -> dict[str, Any]:
    coordinator = make_coordinator(
        cfg,
        strategy=make_strategy(cfg),
        client_fn=client_fn,
        spec=sim.spec,
        init_params=sim.init_params,
        population=Population(num_examples={cid: num_examples}),
        central_eval=sim.central_eval,
    )
    try:
        history = coordinator.run(cfg.rounds)
    finally:
        coordinator.engine.close()
    return final_metrics(history)


def run_baseline(sim: Simulation, kind: str, *, quiet: bool = True) -> dict[str, Any]:
    """The final central metrics of baseline ``kind`` (``local`` or ``central``) of ``sim``, with
    ``seconds`` (its wall time) and, for ``local``, ``clients`` (how many were averaged)."""
    cfg = baseline_config(sim.cfg)
    started = time.perf_counter()
    if kind == "central":
        everyone = pooled(sim.clients)
        out = _train_alone(sim, cfg, 0, len(everyone.train), lambda c: sim.client_of(c, everyone))
        out = {k: v for k, v in out.items() if _is_scalar(v)}
    elif kind == "local":
        finals = []
        ids = [cid for cid, c in enumerate(sim.clients) if len(c.train)]
        for i, cid in enumerate(ids):
            if not quiet:
                print(f"local-only baseline: client {i + 1}/{len(ids)}", end="\r", file=sys.stderr)
            finals.append(_train_alone(sim, cfg, cid, len(sim.clients[cid].train), sim.client))
        out = average_metrics(finals)
        out["clients"] = len(finals)
    else:
        raise ConfigError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINE_KINDS)}")
    out["seconds"] = time.perf_counter() - started
    return out


def average_metrics(finals: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The mean of each scalar metric over the runs that define it (finite values only)."""
    keys = dict.fromkeys(k for final in finals for k, v in final.items() if _is_scalar(v))
    out = {}
    for key in keys:
        values = [float(f[key]) for f in finals if _is_scalar(f.get(key))]
        finite = [v for v in values if math.isfinite(v)]
        out[key] = sum(finite) / len(finite) if finite else math.nan
    return out


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def render_baselines(summary: Mapping[str, Any], console: Console | None = None) -> None:
    """A table with one column per training mode: local only, federated, centralised."""
    baselines = summary.get("baselines", {})
    final = summary.get("final", {})
    columns = [("local only", baselines.get("local")), ("federated", final)]
    columns.append(("centralised", baselines.get("central")))
    shown = [(name, values) for name, values in columns if values is not None]
    table = Table(title="why federate: the same model and budget, three ways")
    table.add_column("metric")
    for name, _ in shown:
        table.add_column(name, justify="right")
    keys = [k for k, v in final.items() if _is_scalar(v) and k != "train_loss"]
    if baselines:  # the metrics the baselines report too (movielens: the pooled ones)
        keys = [k for k in keys if any(k in b for b in baselines.values())]
    for key in keys:
        cells = []
        for _, values in shown:
            value = values.get(key)
            cells.append(f"{value:.4f}" if _is_scalar(value) else "")
        table.add_row(key, *cells)
    (console or Console()).print(table)


def run_with_baselines(
    cfg: Config, out_dir: str | Path, kinds: Sequence[str], *, quiet: bool = False
) -> dict[str, Any]:
    """``fedloom.simulation.run`` plus the baselines ``kinds``: ``summary.json`` gets
    ``baselines: {kind: final metrics}`` beside ``final``. Returns the summary."""
    started = time.perf_counter()
    out = Path(out_dir)
    sim: Simulation | RecommendationSimulation
    if cfg.dataset.name == "movielens":  # its baselines are the same MF with every user's factor
        sim = RecommendationSimulation(cfg)
        baselines = {kind: sim.baseline(kind, quiet=quiet) for kind in parse_baselines(kinds)}
    else:
        sim = Simulation(cfg)
        baselines = {kind: run_baseline(sim, kind, quiet=quiet) for kind in parse_baselines(kinds)}

    def summary_of(history: list[dict[str, Any]], wall: float) -> dict[str, Any]:
        summary = sim.summary(history, wall, out)
        at = list(summary).index("final") + 1
        items = list(summary.items())
        return dict([*items[:at], ("baselines", baselines), *items[at:]])

    summary = run_recorded(
        sim.coordinator(), cfg.rounds, out, quiet=quiet, summary_of=summary_of, started=started
    )
    if not quiet:
        render_baselines(summary)
    return summary
