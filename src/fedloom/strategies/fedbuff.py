"""FedBuff: federated learning with buffered asynchronous aggregation.

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba. "Federated Learning with Buffered
Asynchronous Aggregation." AISTATS 2022 (Algorithm 1).

The server keeps ``concurrency`` (C) clients training at once, each from the model version that
was current when it started. When a client finishes, its update ``delta_i = local - global`` goes
into a buffer, weighted by its staleness ``tau_i`` (server steps taken since it started), and a
new client starts from the current model. As soon as ``buffer_size`` (K) updates are buffered the
server steps, with no round barrier waiting for the slowest client:

    aggregate = (1 / K) * sum_i s(tau_i) * delta_i,   s(tau) = 1 / sqrt(1 + tau)
    w' = server_optimizer(w, -aggregate)              (SGD with server_lr: w + eta_g * aggregate)

One coordinator round is one server step, planned as asynchronous exchanges (``Exchange.until``)
on an ``Asynchronous`` engine, whose tasks stay in flight across rounds until they end. Each round
starts clients until C are at work and waits, one exchange at a time, for the next task to end,
starting a new client for every one that ends, until K updates are buffered; the rest stay in
flight into later rounds. A task records the model version it started from as its round (a round
either steps the model once or is retried as the same round from the same model), so an
update's staleness is the current round minus its task's round. The same plan runs in both places:

- in a deployment (``fedloom server``) on the remote engine, on real time: a task ends when its
  client uploads, disconnects, or misses ``server.round_deadline_s``. What is in flight when the
  server stops or crashes is lost (the clients' uploads for it are refused); a resumed run starts
  new clients from its last checkpoint.
- in simulation (``fedloom run`` with ``clients.enabled``) on
  ``fedloom.engines.virtual_time.VirtualTimeEngine``, on the virtual clock of simulated clients:
  the clock says when each task ends (its client's speed, bandwidth and availability), and the
  clients online are those the clock says (``ClockedPopulation``). The schedule depends only on
  the clock and the seeded selection, so every engine gives the same run.

Choices the paper leaves open: a client trains at most once per model version (a second run
from the same model would repeat the first), and a client whose task failed or dropped out is
not asked again before the next version; so a round also ends, with fewer than K updates, when no
idle client is online and none in flight, and waiting (only on virtual time) brings no new client
online. The mean divides by the updates the buffer holds (K, unless one failed or was rejected);
an update that a client's departure cut short is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedloom.core.task import FIT, MODEL, Result, Task
from fedloom.strategies.base import RoundContext, RoundPlan, Strategy, StrategyState

log = logging.getLogger("fedloom")

VERSION = "fedbuff/version"
"""The model version: server steps taken so far, shape (1,)."""


def staleness_weight(staleness: int | np.ndarray) -> np.ndarray:
    """The paper's s(tau) = 1 / sqrt(1 + tau)."""
    return 1.0 / np.sqrt(1.0 + np.asarray(staleness, np.float64))


def buffered_update(updates: Sequence[np.ndarray], staleness: Sequence[int]) -> np.ndarray:
    """``(1 / K) * sum_i s(tau_i) * delta_i`` over the K buffered updates."""
    weights = staleness_weight(np.asarray(staleness))
    total = np.zeros_like(updates[0], dtype=np.float64)
    for w, vec in zip(weights, updates, strict=True):
        total += w * vec
    return (total / len(updates)).astype(np.float32)


@dataclass
class FedBuff(Strategy):
    """Buffered asynchronous aggregation: K updates per server step, C clients at work."""

    buffer_size: int = 10
    concurrency: int = 20

    name = "fedbuff"
    needs_individual_updates = (
        "fedbuff weights each update by its own staleness as it arrives, with no cohort that "
        "uploads together"
    )
    mode = "train"
    asynchronous = True

    def init_state(self, params: np.ndarray) -> StrategyState:
        return {VERSION: np.zeros(1, np.int64)}

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        """One server step: keep C clients at work, each from the model current when it starts,
        and step once K updates have arrived."""
        version = int(ctx.state[VERSION][0])
        config = self.fit_config(ctx)
        updates: list[np.ndarray] = []
        staleness: list[int] = []
        kept: set[int] = set()

        def keep(result: Result, vec: np.ndarray | None) -> None:
            if vec is not None and result.task.kind == FIT:
                updates.append(vec)
                staleness.append(ctx.round - result.task.round)
                kept.add(result.task.client_id)

        flying = list(ctx.in_flight)
        # a client trains at most once per model version, and one whose task failed (it
        # disconnected, missed its deadline, sent an update that was refused) is not asked again
        # before the next one
        started = {t.client_id for t in flying if t.round == ctx.round}
        waited: set[int] | None = None  # the clients online when the last exchange only waited
        short = False
        while len(updates) < self.buffer_size:
            busy = started | {t.client_id for t in flying}
            idle = [c for c in ctx.eligible if c not in busy]
            free = self.concurrency - len(flying)
            chosen: list[int] = []
            if free > 0 and idle:
                picked = ctx.rng.choice(np.asarray(idle), size=min(free, len(idle)), replace=False)
                chosen = sorted(int(c) for c in picked)
            if chosen or flying:
                waited = None
            else:
                # nobody to start, nothing to wait for: unless an idle client is offline now and
                # waiting (on virtual time: the clock moves on to when a client comes online)
                # brings a client online, the buffer cannot fill
                online = set(ctx.eligible)
                offline = [
                    c
                    for c, n in ctx.num_examples.items()
                    if n > 0 and c not in online and c not in busy
                ]
                if not offline or online == waited:
                    short = True
                    break
                waited = online
            started.update(chosen)
            tasks = [
                Task(FIT, ctx.round, cid, config, {MODEL: ctx.model.digest}, ctx.upload())
                for cid in chosen
            ]
            exchange = yield from ctx.channel.individual(
                tasks,
                [ctx.model],
                keep,
                self.needs_individual_updates or "",
                until=self.buffer_size - len(updates),
            )
            flying = exchange.in_flight
            started.update(t.client_id for t in exchange.ended if t.client_id not in kept)
        ctx.metrics.update(in_flight=float(len(flying)))
        return self._step(ctx, version, updates, staleness, short)

    def _step(
        self,
        ctx: RoundContext,
        version: int,
        updates: list[np.ndarray],
        staleness: list[int],
        short: bool,
    ) -> np.ndarray | None:
        """The buffered update of model version ``version`` (None: too few to step on).
        ``short``: the buffer could not fill."""
        ctx.state[VERSION] = np.array([version + 1], np.int64)
        if short:
            log.warning(
                "fedbuff: %d of %d updates arrived at model version %d: every other client has "
                "trained on it or is never online again (strategy.buffer_size is more than the "
                "clients can give)",
                len(updates),
                self.buffer_size,
                version,
            )
        if len(updates) < max(1, self.min_fit_clients):
            log.error(
                "fedbuff: %d usable updates in the buffer, min_fit_clients is %d; the global "
                "model is unchanged",
                len(updates),
                self.min_fit_clients,
            )
            return None
        ctx.metrics.update(
            staleness_mean=float(np.mean(staleness)), staleness_max=float(np.max(staleness))
        )
        return buffered_update(updates, staleness)

    def pseudo_gradient(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        return -aggregate
