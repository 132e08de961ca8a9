"""Aggregation channels: how a round's client uploads become the sums a strategy needs.

A strategy says *what* it needs (``core.summands.SumPlan``: one or more weighted sums of
vectors, and the rule that makes a client's contribution to them) and asks the round's channel
(``RoundContext.channel``) for them with ``yield from ctx.channel.sums(...)``. *How* they are
computed is the channel's business:

- ``Plain``: uploads arrive one by one (inside TLS); the server runs the rule on each and adds
  it to a running float64 sum. A robust aggregator (median, Krum, ...) sees the individual
  first terms here, and only here.
- ``Secure``: SecAgg+ (``strategies.secagg``). Each client runs the same rule, masks its
  contribution, and the server learns the sums and nothing smaller.

A strategy that needs the individual updates (a robust aggregator, IFCA's k-means warm start,
FedBuff's staleness weights) asks for them with ``ctx.channel.individual(...)``; the secure
channel refuses that, and ``refusal`` says so at config time, with the reason. There is no other
path from an upload to a strategy, so no strategy can run in the clear by accident.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedloom.aggregators import Aggregator, WeightedMean
from fedloom.core.summands import SUM, Contributor, SumPlan, Sums
from fedloom.core.task import Blob, Result, Task
from fedloom.errors import ConfigError
from fedloom.secagg import Settings as SecAggSettings
from fedloom.strategies.base import Exchange, OnResult, RoundContext

log = logging.getLogger("fedloom")

SumsPlan = Generator[Exchange, None, "Sums | None"]


class Channel(ABC):
    """How a round's uploads are aggregated (see the module docstring)."""

    name: str = "channel"
    reveals_updates: bool = True
    """Whether the server sees each client's upload (``individual`` works)."""

    @abstractmethod
    def sums(
        self,
        ctx: RoundContext,
        tasks: Sequence[Task],
        blobs: Sequence[Blob],
        plan: SumPlan,
        aggregator: Aggregator | None = None,
        options: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> SumsPlan:
        """Run ``tasks`` and return the sums of ``plan`` over the clients whose results are
        usable (None: the round cannot complete; logged). ``options`` adds per-client rule
        options (IFCA's cluster); ``aggregator`` (plain only) combines the individual first
        terms in place of their weighted mean."""

    @abstractmethod
    def individual(
        self,
        tasks: Sequence[Task],
        blobs: Sequence[Blob],
        on_result: OnResult,
        why: str,
        until: int | None = None,
    ) -> Generator[Exchange, None, Exchange]:
        """Run ``tasks`` and hand each validated individual upload to ``on_result``; ``why``
        names what needs them (for the refusal of a channel that hides them). ``until``: an
        asynchronous exchange (``Exchange.until``); the exchange is returned, its ``ended`` and
        ``in_flight`` filled in."""

    def refusal(self, needs_individual: str | None) -> str | None:
        """Why a strategy whose ``needs_individual`` reason is given cannot run on this
        channel, or None."""
        return None


def plan_tasks(
    tasks: Sequence[Task],
    plan: SumPlan,
    scale: float | None,
    options: Mapping[int, Mapping[str, Any]] | None,
) -> list[Task]:
    """``tasks`` with their sum plan (``SUM``) in their config. Tasks that shared a config
    still share one (engines work a config out once: the vectorized engine's memo), unless
    their rule options differ (IFCA's cluster)."""
    per_client = options or {}
    configs: dict[tuple[int, tuple[tuple[str, Any], ...]], dict[str, Any]] = {}
    out = []
    for t in tasks:
        own = tuple(sorted(per_client.get(t.client_id, {}).items()))
        key = (id(t.config), own)
        config = configs.get(key)
        if config is None:
            config = configs[key] = {**t.config, SUM: plan.config(scale, **dict(own))}
        out.append(replace(t, config=config))
    return out


class Plain(Channel):
    """Uploads in the clear (inside TLS); the sums are taken on the server."""

    name = "plain"

    def sums(
        self,
        ctx: RoundContext,
        tasks: Sequence[Task],
        blobs: Sequence[Blob],
        plan: SumPlan,
        aggregator: Aggregator | None = None,
        options: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> SumsPlan:
        plan = plan.without_units()
        values = np.zeros(plan.values, np.float64)
        weights = np.zeros(len(plan.terms), np.float64)
        robust = None if aggregator is None or isinstance(aggregator, WeightedMean) else aggregator
        if robust is not None:
            robust.begin(plan.terms[0].size)
        count = 0
        first = plan.terms[0].size
        contributor = Contributor(plan.config(None))
        per_client = options or {}

        def on_result(result: Result, vec: np.ndarray | None) -> None:
            nonlocal count
            if vec is None:
                raise ValueError("a fit result arrived without an update")
            mine = per_client.get(result.task.client_id)
            try:
                v, w = contributor(vec, result.num_examples, result.metrics, mine)
                raw = (
                    contributor.terms_of(vec, result.metrics, mine)[0][0]
                    if robust is not None
                    else None
                )
            except ValueError as exc:
                log.warning(
                    "round %d: client %d's result cannot contribute (%s); left out",
                    ctx.round,
                    result.task.client_id,
                    exc,
                )
                return
            if robust is not None and raw is not None:
                robust.add(raw, result.num_examples)
                v[:first], w[0] = 0.0, 0.0
            values[:] += v
            weights[:] += w
            count += 1

        # the server runs the rule itself: the tasks need not carry the plan
        yield Exchange(list(tasks), list(blobs), on_result)
        sums = Sums.of(plan.terms, values, weights, count)
        if robust is not None and robust.count:
            sums.totals[0] = robust.finish().astype(np.float64)
            sums.weights[0] = 1.0
        return sums

    def individual(
        self,
        tasks: Sequence[Task],
        blobs: Sequence[Blob],
        on_result: OnResult,
        why: str,
        until: int | None = None,
    ) -> Generator[Exchange, None, Exchange]:
        exchange = Exchange(list(tasks), list(blobs), on_result, until=until)
        yield exchange
        return exchange


@dataclass
class Secure(Channel):
    """Secure aggregation (SecAgg+ or SecAgg): the server learns only the sums."""

    settings: SecAggSettings

    name = "secure"
    reveals_updates = False

    def sums(
        self,
        ctx: RoundContext,
        tasks: Sequence[Task],
        blobs: Sequence[Blob],
        plan: SumPlan,
        aggregator: Aggregator | None = None,
        options: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> SumsPlan:
        from fedloom.strategies.secagg import secure_fit

        if aggregator is not None and not isinstance(aggregator, WeightedMean):
            raise ConfigError(self.refusal("the robust aggregator compares individual updates"))
        scale = None
        if any(t.weighted for t in plan.terms):
            declared = [ctx.num_examples.get(t.client_id, 0) for t in tasks]
            scale = float(max(declared, default=0)) or None
            if scale is None:
                log.error(
                    "round %d: weighted secure aggregation needs the clients' declared sizes",
                    ctx.round,
                )
                return None
        planned = plan_tasks(tasks, plan, scale, options)
        secure = yield from secure_fit(ctx, planned, self.settings, blobs, plan)
        if secure is None:
            return None
        return Sums.of(plan.terms, secure.total, secure.weights, secure.count)

    def individual(
        self,
        tasks: Sequence[Task],
        blobs: Sequence[Blob],
        on_result: OnResult,
        why: str,
        until: int | None = None,
    ) -> Generator[Exchange, None, Exchange]:
        raise ConfigError(self.refusal(why))
        yield  # pragma: no cover  (a generator, like the plain channel's)

    def refusal(self, needs_individual: str | None) -> str | None:
        if needs_individual is None:
            return None
        return (
            f"secure_aggregation.enabled: {needs_individual}; secure aggregation reveals only "
            "the sum of the updates"
        )


def make_channel(settings: SecAggSettings | None) -> Channel:
    """The secure channel with ``settings``, or the plain one."""
    return Plain() if settings is None else Secure(settings)
