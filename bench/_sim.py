"""One fedloom simulation of a config, for the benchmarks that compare configs in one process."""

from __future__ import annotations

from typing import Any


def run_history(overrides: list[str]) -> list[dict[str, Any]]:
    """The round records of ``fedloom run`` with these ``--set`` overrides (no results folder)."""
    from fedloom.config import load_config
    from fedloom.simulation import Simulation

    sim = Simulation(load_config(None, overrides))
    coordinator = sim.coordinator()
    try:
        return coordinator.run(sim.cfg.rounds)
    finally:
        coordinator.engine.close()
