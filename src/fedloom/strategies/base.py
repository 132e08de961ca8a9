"""The strategy interface: selection, per-client config, the stages of a round, aggregation, the
server optimiser, and the server's state between rounds.

A round is a generator of exchanges (``fit_round``): each ``Exchange`` is one stage, a set of tasks
with the blobs they name and a callback that receives every validated result as it arrives (so
aggregation streams). The generator returns the aggregate, which the strategy turns into a
pseudo-gradient (Reddi et al. 2021) for the server optimiser. FedAvg is one exchange; a protocol
with several stages (secure aggregation, a clipping bound agreed on first) yields several, and
each stage can depend on the results of the one before.

Strategy state (SCAFFOLD's server control variate, later cluster models or a privacy accountant) is
a dict of arrays in ``RoundContext.state``: the coordinator keeps it beside the server optimiser's
state and checkpoints both with the model. New algorithms subclass ``Strategy`` in one file and
override only what differs.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedloom.aggregators import Aggregator, EmptyAggregate, WeightedMean
from fedloom.core.codec import Codec
from fedloom.core.params import ParamSpec
from fedloom.core.selection import poisson_sample, sample_clients
from fedloom.core.summands import SumPlan, Sums, Term
from fedloom.core.task import EVALUATE, FIT, MODEL, Blob, Result, Task, Upload
from fedloom.metrics import fairness_summary
from fedloom.optim import ServerOptimizer, ServerSGD

if TYPE_CHECKING:
    from fedloom.strategies.channel import Channel

log = logging.getLogger("fedloom")

StrategyState = dict[str, np.ndarray]


@dataclass
class RoundContext:
    """What a strategy knows when it plans a round."""

    round: int
    eligible: Sequence[int]
    rng: np.random.Generator
    seed: int
    spec: ParamSpec
    codec: Codec
    params: np.ndarray
    model: Blob
    state: StrategyState
    num_clients: int
    num_examples: Mapping[int, int] = field(default_factory=dict)
    """The training-set size each client declared (when it joined, in a deployment)."""
    upload_codec: Codec | None = None
    error_feedback: bool = False
    mask: Blob | None = None
    """The pruning mask of a pruned model (``model`` is sparse under it), else None."""
    support: np.ndarray | None = None
    """``mask`` as booleans over the model."""
    encode_seconds: float = 0.0  # spent in ``blob``: the coordinator counts it as download time
    metrics: dict[str, Any] = field(default_factory=dict)
    """What the strategy reports about the round (``epsilon``, ``clip_norm``, IFCA's clusters):
    added to the round's record when the round succeeds."""
    diagnostics: dict[str, float] = field(default_factory=dict)
    """What the strategy reports about the round whether or not it succeeds (which clients a
    protocol lost at which stage): added to the round's record either way."""
    in_flight: Sequence[Task] = ()
    """Tasks of earlier rounds still running on an ``Asynchronous`` engine (a deployment without
    a round barrier), when the round starts; their results arrive in this round's asynchronous
    exchanges (``Exchange.until``)."""
    channel: Channel = field(default_factory=lambda: _plain())
    """How the round's uploads are aggregated (``strategies.channel``): every strategy reaches
    its clients' uploads through it."""

    def blob(self, vec: np.ndarray) -> Blob:
        """``vec`` (model-sized) encoded like the model, to send with tasks."""
        start = time.perf_counter()
        try:
            return Blob.encode(self.spec, self.codec, vec)
        finally:
            self.encode_seconds += time.perf_counter() - start

    def upload(self, parts: int = 1) -> Upload:
        """An upload of ``parts`` model-sized vectors in the round's upload codec (only their
        values under the pruning mask, when the model is pruned)."""
        codec = self.upload_codec or self.codec
        if self.mask is None or self.support is None:
            return Upload(codec.name, parts * self.spec.size)
        return Upload(codec.name, parts * int(self.support.sum()), self.mask.digest)


OnResult = Callable[[Result, "np.ndarray | None"], None]


@dataclass
class Exchange:
    """One stage of a round: tasks, every blob they name, and where validated results go.

    ``on_result(result, vec)`` is called for each result that passed validation, with its decoded
    upload (None for tasks that take no upload). Failed and rejected results never reach it.

    With ``until`` the exchange is asynchronous (it needs an ``Asynchronous`` engine: ``fedloom
    server``): its tasks start and it ends as soon as some task ends, at most ``until`` of them,
    whether started by this exchange or by an earlier one, of this round or an earlier round.
    The others stay in flight. The coordinator then sets ``ended`` (every task that ended, with
    or without a usable result) and ``in_flight`` (the tasks still running).
    """

    tasks: list[Task]
    blobs: Sequence[Blob]
    on_result: OnResult
    until: int | None = None
    ended: list[Task] = field(default_factory=list)
    in_flight: list[Task] = field(default_factory=list)


RoundPlan = Generator[Exchange, None, "np.ndarray | None"]


@dataclass
class Strategy(ABC):
    """Shared machinery; subclasses set ``mode`` and ``pseudo_gradient``."""

    fraction_fit: float = 1.0
    min_fit_clients: int = 1
    fraction_evaluate: float = 1.0
    client_config: Mapping[str, Any] = field(default_factory=dict)
    server_optimizer: ServerOptimizer = field(default_factory=ServerSGD)
    sampling: str = "fixed"
    """``fixed``: ``sample_clients``; ``poisson``: each client with probability ``fraction_fit``."""
    # Every update's L2 norm is bounded before it reaches the aggregator (None: unbounded):
    # "clip" scales a longer update down to the bound, "reject" refuses it.
    max_update_norm: float | None = None
    max_update_norm_action: str = "clip"
    # The rule that combines a round's updates (None: the example-weighted mean, which streams);
    # a factory, because every round begins a fresh one.
    aggregator_factory: Callable[[], Aggregator] | None = None
    finetune_epochs: int = 0
    """Local epochs each client trains on its own data before federated evaluation scores it
    (``eval.finetune_epochs``; the fine-tuned model is dropped afterwards)."""

    name = "strategy"
    asynchronous: ClassVar[bool] = False
    """Plans exchanges with ``until`` (no round barrier): needs an ``Asynchronous`` engine."""
    label_metrics: ClassVar[tuple[str, ...]] = ()
    """Client evaluation metrics that are labels, not measurements (IFCA's chosen cluster): left
    out of the pooled ``fed_<metric>``, still given to ``evaluation_metrics``."""
    mode = "train"

    def init_state(self, params: np.ndarray) -> StrategyState:
        """The server state this algorithm keeps between rounds (none by default)."""
        return {}

    def fit_config(self, ctx: RoundContext) -> dict[str, Any]:
        """The config every fit task of the round carries."""
        config = {**self.client_config, "mode": self.mode, "round": ctx.round, "seed": ctx.seed}
        if ctx.error_feedback:
            config["error_feedback"] = True
        return config

    def configure_fit(self, ctx: RoundContext) -> list[Task]:
        """Select this round's clients and give each its fit task on the global model."""
        if self.sampling == "poisson":
            chosen = poisson_sample(ctx.eligible, self.fraction_fit, ctx.rng)
        else:
            chosen = sample_clients(ctx.eligible, self.fraction_fit, self.min_fit_clients, ctx.rng)
        config = self.fit_config(ctx)
        blobs = {MODEL: ctx.model.digest}
        return [Task(FIT, ctx.round, cid, config, blobs, ctx.upload()) for cid in chosen]

    needs_individual_updates: ClassVar[str | None] = None
    """Why this algorithm needs each client's update on its own (None: it aggregates sums, and
    runs on every channel)."""

    def individual_reason(self) -> str | None:
        """Why this strategy, as configured, needs the individual updates (its algorithm, or a
        robust aggregator), or None: ``Channel.refusal`` turns it into a config error."""
        if self.needs_individual_updates is not None:
            return self.needs_individual_updates
        agg = self.aggregator()
        if not isinstance(agg, WeightedMean):
            return f"strategy.aggregator ({type(agg).__name__}) combines individual updates"
        return None

    def private_refusal(self) -> str | None:
        """Why differential privacy cannot wrap this strategy (``strategies.private``), or
        None: by default, that it needs the individual updates."""
        reason = self.individual_reason()
        if reason is None:
            return None
        return f"{reason}; differential privacy calibrates its noise to a sum of clipped updates"

    def sum_plan(self, ctx: RoundContext) -> SumPlan:
        """The sums a round needs (``core.summands``): by default one, the example-weighted sum
        of the updates (the model's size, or the upload's)."""
        return SumPlan((Term("delta", ctx.spec.size),))

    def fit_blobs(self, ctx: RoundContext) -> list[Blob]:
        """Every blob the round's fit tasks name (the global model by default)."""
        return [ctx.model]

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        """One exchange of fit tasks through the round's channel, whose sums ``combine`` turns
        into the aggregate (the example-weighted mean, or the aggregator's result)."""
        sums = yield from ctx.channel.sums(
            ctx, self.configure_fit(ctx), self.fit_blobs(ctx), self.sum_plan(ctx), self.aggregator()
        )
        if not self.enough(sums):
            return None
        assert sums is not None
        return self.combine(sums, ctx)

    def enough(self, sums: Sums | None) -> bool:
        """Whether ``sums`` hold at least ``min_fit_clients`` contributions (logged if not)."""
        if sums is None:
            return False
        if sums.count < self.min_fit_clients or not sums.weights[0] > 0:
            log.error(
                "only %d usable updates, min_fit_clients is %d; the global model is unchanged",
                sums.count,
                self.min_fit_clients,
            )
            return False
        return True

    def combine(self, sums: Sums, ctx: RoundContext) -> np.ndarray | None:
        """The aggregate from the round's sums: the first term's weighted mean."""
        mean = sums.mean(0)
        return None if mean is None else mean.astype(np.float32)

    def finish(self, agg: Aggregator) -> np.ndarray | None:
        """The aggregate, or None (a failed round) when too few usable updates came back."""
        if agg.count < self.min_fit_clients:
            log.error(
                "only %d usable updates, min_fit_clients is %d; the global model is unchanged",
                agg.count,
                self.min_fit_clients,
            )
            return None
        try:
            return agg.finish()
        except EmptyAggregate as exc:
            log.error("nothing to aggregate (%s); the global model is unchanged", exc)
            return None

    def stop_reason(self, state: StrategyState, num_clients: int) -> str | None:
        """Why the run must stop before its next round (a spent privacy budget), or None.
        ``state`` is the strategy state after the last round, ``num_clients`` the eligible
        clients the next round selects from."""
        return None

    def check(self, spec: ParamSpec, num_clients: int | None) -> None:
        """Raise ``ConfigError`` if this strategy cannot run on a model of ``spec`` with
        ``num_clients`` eligible clients (None: not known yet, as in a deployment before clients
        join). The coordinator calls it once, before round 1."""
        return None

    def evaluate_config(self, ctx: RoundContext) -> dict[str, Any]:
        """The config every federated-evaluation task carries (with ``finetune_epochs``, the
        local-training settings the fine-tuning uses)."""
        config: dict[str, Any] = {"round": ctx.round, "seed": ctx.seed}
        if self.finetune_epochs > 0:
            config = {**self.client_config, **config, "finetune_epochs": self.finetune_epochs}
        return config

    def evaluation_blobs(self, ctx: RoundContext) -> list[Blob]:
        """Every blob the tasks of ``configure_evaluate`` name (the global model by default)."""
        return [ctx.model]

    def configure_evaluate(self, ctx: RoundContext) -> list[Task]:
        """Select clients for federated evaluation on their local test splits."""
        chosen = sample_clients(ctx.eligible, self.fraction_evaluate, 1, ctx.rng)
        config = self.evaluate_config(ctx)
        return [Task(EVALUATE, ctx.round, cid, config, {MODEL: ctx.model.digest}) for cid in chosen]

    def evaluation_metrics(
        self, per_client: Sequence[tuple[int, dict[str, float]]]
    ) -> dict[str, Any]:
        """The round record's federated-evaluation entries from each evaluated client's
        ``(client id, metrics)``: ``fed_<metric>_<stat>`` for every metric, with the spread
        statistics of ``fairness_summary`` (mean, std, min, max, worst10)."""
        return fairness_metrics(per_client)

    def aggregator(self) -> Aggregator:
        if self.aggregator_factory is not None:
            return self.aggregator_factory()
        return WeightedMean(weighted=True)

    @abstractmethod
    def pseudo_gradient(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        """Turn the aggregated client updates into the gradient the server optimiser steps on."""


def fairness_metrics(
    per_client: Sequence[tuple[int, Mapping[str, float]]], prefix: str = "fed_"
) -> dict[str, float]:
    """``{prefix}<metric>_<stat>`` over the clients' values of every metric (a loss, RMSE or MAE
    is worse when higher, so its worst10 is its highest decile)."""
    values: dict[str, list[float]] = {}
    for _, metrics in per_client:
        for key, value in metrics.items():
            values.setdefault(key, []).append(value)
    out: dict[str, float] = {}
    for key, column in values.items():
        higher = key not in ("loss", "rmse", "mae")
        for stat, v in fairness_summary(column, higher_is_better=higher).items():
            out[f"{prefix}{key}_{stat}"] = v
    return out


def positive_metric(result: Result, key: str, round_num: int) -> float | None:
    """The positive, finite metric ``key`` a client reported with its result, or None (with a
    warning that the result is left out) when it is missing or implausible."""
    value = result.metrics.get(key)
    if value is None or not math.isfinite(value) or value <= 0:
        log.warning(
            "round %d: client %d's result carries no valid positive %s (got %r); left out",
            round_num,
            result.task.client_id,
            key,
            value,
        )
        return None
    return float(value)


def _plain() -> Channel:
    from fedloom.strategies.channel import Plain

    return Plain()
