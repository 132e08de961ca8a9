"""The aggregation channel around every strategy's uploads: each sum-based strategy gives the same
model on the secure channel as on the plain one (within the quantisation error), no strategy can
reach an individual update under secure aggregation, and those that need one are refused at
config time with the reason."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from fedloom.config import load_config
from fedloom.core.summands import SumPlan, Sums, Term, contribution
from fedloom.core.task import FIT, MESSAGE, Blobs, Result, Task
from fedloom.engines.base import Engine
from fedloom.errors import ConfigError
from fedloom.server.coordinator import Coordinator
from fedloom.simulation import Simulation
from fedloom.strategies.channel import Plain, Secure
from fedloom.strategies.factory import STRATEGY_NAMES, make_strategy, secure_aggregation

BASE = ["partition.num_clients=6", "seed=3", "client.epochs=1", "client.batch_size=100"]
SECURE = ["secure_aggregation.enabled=true", "secure_aggregation.mode=secagg"]
QUANTUM = 8.0 / (2**22 - 1)  # one level of the default fixed-point encoding


class Recording:
    """An engine that keeps every result it hands the coordinator."""

    name = "recording"

    def __init__(self, inner: Engine) -> None:
        self.inner, self.results = inner, []  # type: tuple[Engine, list[Result]]

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        for result in self.inner.run(tasks, blobs):
            self.results.append(result)
            yield result

    def close(self) -> None:
        self.inner.close()


def _coordinator(overrides: list[str]) -> Coordinator:
    coord = Simulation(load_config(None, [*BASE, *overrides])).coordinator()
    coord.engine = Recording(coord.engine)
    return coord


SUM_BASED = {
    "fedavg": [],
    "fedprox": ["strategy.proximal_mu=0.1"],
    "fedsgd": [],
    "scaffold": [],
    "fednova": [],
    "qffl": ["strategy.q=1", "strategy.qffl_lipschitz=1"],
    "fedper": ["strategy.personal_layers=[net.2]"],
    "ditto": [],
    "ifca": ["strategy.clusters=2"],
}


@pytest.mark.parametrize("name", sorted(SUM_BASED))
def test_every_sum_based_strategy_runs_securely_and_equals_the_plaintext_run(name: str) -> None:
    overrides = [f"strategy.name={name}", *SUM_BASED[name]]
    plain, secure = _coordinator(overrides), _coordinator([*overrides, *SECURE])
    assert isinstance(plain.channel, Plain) and isinstance(secure.channel, Secure)
    for r in (1, 2):
        record = secure.run_round(r, evaluate=False)
        assert record["status"] == "ok", record
        if name == "ifca" and r == 1:
            # the plain run's round 1 clusters individual updates (k-means), which the secure
            # channel hides; from round 2 both start from the secure run's cluster models
            plain.strategy_state = {k: v.copy() for k, v in secure.strategy_state.items()}
            plain.params = secure.params.copy()
            continue
        assert plain.run_round(r, evaluate=False)["status"] == "ok"
        # every client's contribution is off by at most half a level per value; units scale
        # the level of q-FFL's and FedNova's terms
        # (FedNova's work: 1024 steps a unit, 2e-3 steps a level, 1.0e-5 on the model)
        assert np.abs(secure.params - plain.params).max() <= 3e-5
        assert np.isfinite(secure.params).all()
        plain.params = secure.params.copy()
        plain.strategy_state = {k: v.copy() for k, v in secure.strategy_state.items()}
    # the server never held one client's update: every fit upload it received was masked
    assert isinstance(secure.engine, Recording)
    fits = [r for r in secure.engine.results if r.task.kind == FIT]
    assert fits and all(r.task.upload is not None and r.task.upload.codec == MESSAGE for r in fits)


@pytest.mark.parametrize("name", sorted(STRATEGY_NAMES))
def test_no_registered_strategy_runs_in_the_clear_on_the_secure_channel(name: str) -> None:
    """Every strategy, built in Python with the secure channel, either runs with masked uploads
    only or is refused with the reason before round 1."""
    cfg = load_config(None, [*BASE, f"strategy.name={name}", *SUM_BASED.get(name, [])])
    strategy = make_strategy(cfg)
    reason = strategy.individual_reason()
    if name in SUM_BASED:
        assert reason is None  # and the test above runs it with masked uploads only
        return
    assert reason is not None, f"{name} neither aggregates sums nor says why it cannot"
    settings = secure_aggregation(load_config(None, [*BASE, *SECURE]))
    assert settings is not None
    host = Simulation(load_config(None, BASE)).coordinator()  # a model, engine and population
    with pytest.raises(ConfigError, match="reveals only the sum"):
        Coordinator(
            strategy=strategy,
            engine=host.engine,
            spec=host.spec,
            params=host.params,
            population=host.population,
            channel=Secure(settings),
        )


def test_config_refuses_fedbuff_and_robust_aggregators_with_secure_aggregation() -> None:
    with pytest.raises(ConfigError, match="its own staleness"):
        load_config(None, [*BASE, *SECURE, "strategy.name=fedbuff"])
    with pytest.raises(ConfigError, match="needs each update on its own"):
        load_config(None, [*BASE, *SECURE, "strategy.aggregator=median"])


def test_a_contribution_weights_each_term_and_divides_by_its_unit() -> None:
    plan = SumPlan((Term("a", 2), Term("b", 1, weighted=False, unit=4.0)))
    values, weights = contribution(np.array([1.0, 2.0, 8.0]), 5, {}, plan.config(scale=10.0))
    # weighted by 5 / 10; the unweighted term by 1, and 8 / 4 on the wire
    assert values.tolist() == [0.5, 1.0, 2.0] and weights.tolist() == [0.5, 1.0]
    sums = Sums.of(plan.terms, values * 2, weights * 2, 2)  # two such clients
    assert sums.mean(0) is not None and sums.mean(0).tolist() == [1.0, 2.0]  # type: ignore[union-attr]
    assert sums.totals[1].tolist() == [16.0] and sums.count == 2


def test_a_contribution_that_cannot_be_made_is_refused() -> None:
    plan = SumPlan((Term("delta", 3), Term("work", 1)), rule="fednova")
    import fedloom.strategies.fednova  # noqa: F401  (registers the rule)

    with pytest.raises(ValueError, match="no valid positive"):
        contribution(np.zeros(3), 1, {}, plan.config(None))
    with pytest.raises(ValueError, match="known rules"):
        contribution(np.zeros(3), 1, {}, {"rule": "nope", "terms": [[3, True, 1.0]]})


def test_a_strategy_that_bypasses_the_channel_is_refused_before_any_upload_in_the_clear() -> None:
    from tests.strategies.two_stage import ClipToMedianNorm

    coord = _coordinator(SECURE)
    coord.strategy = ClipToMedianNorm()  # yields its own exchanges of plaintext fit tasks
    with pytest.raises(ConfigError, match="uploads in the clear"):
        coord.run_round(1, evaluate=False)
    assert isinstance(coord.engine, Recording)
    # its first stage (norms only, no upload) ran; no fit task ever reached a client
    assert all(r.task.kind != FIT for r in coord.engine.results)


def test_a_contribution_beyond_the_fixed_point_range_is_refused_not_clipped() -> None:
    # FedNova's work (about 15 local steps, 0.015 in units of 1024) is far beyond a clip range
    # of 1e-3: each client refuses to mask it, and the round fails with the way out
    coord = _coordinator(
        [
            "strategy.name=fednova",
            "engine.name=sequential",
            *SECURE,
            "secure_aggregation.clip_range=0.001",
        ]
    )
    record = coord.run_round(1, evaluate=False)
    assert record["status"] == "failed"
    assert isinstance(coord.engine, Recording)
    errors = [r.error or "" for r in coord.engine.results if r.task.kind == FIT]
    assert errors and all("raise secure_aggregation.clip_range" in e for e in errors)
