"""``Federation``: everything a run needs, whatever built it and wherever it runs.

The model's layout and initial params, the strategy, the clients (a factory and the population
with its declared sizes; a deployment server has none: its clients join over the network),
central evaluation if any, and the facts about the data that ``summary.json`` reports. The app
kinds (:mod:`fedloom.app.registry`) build one from a ``Config`` or from Python objects;
``coordinator`` wires it through the one ``make_coordinator`` and ``summary`` describes a run
of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.config import Config
from fedloom.core.params import ParamSpec
from fedloom.engines import Engine
from fedloom.engines.base import ClientFn
from fedloom.server.assemble import make_coordinator
from fedloom.server.coordinator import CentralEvaluator, Coordinator, Population, RoundListener
from fedloom.strategies import Strategy

__all__ = ["Federation"]


@dataclass
class Federation:
    """A federation as the coordinator and the results folder see it.

    ``client_fn`` is None on a deployment server, whose ``population`` fills as clients join.
    ``source`` and ``eval_source`` say in words where the model and central evaluation come
    from (the server's log and summary). ``recorded`` is the config ``summary.json`` records
    (``fedloom.simulate`` records only the sections it takes); ``facts`` are more top-level
    summary entries (a simulated attack and its malicious clients).
    """

    cfg: Config
    spec: ParamSpec
    init_params: np.ndarray
    strategy: Strategy
    population: Population
    client_fn: ClientFn | None = None
    central_eval: CentralEvaluator | None = None
    data: dict[str, Any] = field(default_factory=dict)
    wrap_engine: Callable[[Engine], Engine] | None = None
    source: str = ""
    eval_source: str = ""
    recorded: dict[str, Any] | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def config_record(self) -> dict[str, Any]:
        """The config as ``summary.json`` and the trackers record it."""
        return self.recorded if self.recorded is not None else self.cfg.model_dump(mode="json")

    def coordinator(
        self,
        listeners: Sequence[RoundListener] = (),
        *,
        engine: Engine | None = None,
    ) -> Coordinator:
        """The coordinator of this federation: on the engine ``cfg.engine`` names over
        ``client_fn`` (a simulation), or on ``engine`` (a deployment's remote clients)."""
        return make_coordinator(
            self.cfg,
            strategy=self.strategy,
            spec=self.spec,
            init_params=self.init_params,
            population=self.population,
            central_eval=self.central_eval,
            listeners=listeners,
            client_fn=self.client_fn if engine is None else None,
            engine=engine,
            wrap_engine=self.wrap_engine,
        )

    def summary(
        self,
        history: list[dict[str, Any]],
        wall_seconds: float,
        out: Path,
        *,
        num_clients: int | None = None,
    ) -> dict[str, Any]:
        """The ``summary.json`` of a run of this federation; ``num_clients`` defaults to the
        population's (a deployment counts the clients that joined)."""
        # here, not at the top: the results folder's modules bring matplotlib, which a deployment
        # client process (it builds through this layer too) never needs
        from fedloom.tracking.summary import summarize

        population = self.population
        summary = summarize(
            config=self.config_record,
            history=history,
            wall_seconds=wall_seconds,
            out_dir=out,
            num_clients=len(population.num_examples) if num_clients is None else num_clients,
            skipped_clients=population.skipped if num_clients is None else [],
            num_parameters=self.spec.size,
            data=self.data,
        )
        summary.update(self.facts)
        return summary
