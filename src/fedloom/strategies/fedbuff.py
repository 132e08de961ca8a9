"""FedBuff: federated learning with buffered asynchronous aggregation, on a virtual clock.

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba. "Federated Learning with Buffered
Asynchronous Aggregation." AISTATS 2022 (Algorithm 1).

The server keeps ``concurrency`` (C) clients training at once, each from the model version that
was current when it started. When a client finishes, its update ``delta_i = local - global`` goes
into a buffer, weighted by its staleness ``tau_i`` (server steps taken since it started), and a
new client starts from the current model. As soon as ``buffer_size`` (K) updates are buffered the
server steps, with no round barrier waiting for the slowest client:

    aggregate = (1 / K) * sum_i s(tau_i) * delta_i,   s(tau) = 1 / sqrt(1 + tau)
    w' = server_optimizer(w, -aggregate)              (SGD with server_lr: w + eta_g * aggregate)

One coordinator round is one server step. In simulation, when a client finishes is the virtual
clock's answer (``fedloom.server.clock``: its speed, bandwidth and availability). The round plays
the events forward until K updates have arrived. A client is trained when it starts, and its
update is held until the time it arrives: every client that started during the round started
from the same version, so they all train in one engine batch, and the updates of those still in
flight when the server steps are kept in the strategy state (``fedbuff/pending``) with the
version they started from and the time they arrive. The schedule depends only on the clock and
the seeded selection, so every engine gives the same run.

In a deployment (``fedloom server``; no clock) the same algorithm runs on real time, without a
round barrier. The remote engine is ``Asynchronous``: a task stays in flight across coordinator
rounds until its client uploads, disconnects, or misses ``server.round_deadline_s``. Each round
starts clients until C are at work and waits, one asynchronous exchange at a time
(``Exchange.until``), for the next task to end, starting a new client for every one that ends,
until K updates are buffered; the rest stay in flight into later rounds. A task records the model
version it started from as its round: a deployment round either steps the model once or is
retried as the same round from the same model, so an update's staleness is the current round
minus its task's round. What is in flight when the server stops or crashes is lost (the clients'
uploads for it are refused); a resumed run starts new clients from its last checkpoint.

Choices the paper leaves open: a client trains at most once per model version (a second run
from the same model would repeat the first), so a round also ends when no idle client is ever
online again, with fewer than K updates; the mean divides by the updates the buffer holds (K,
unless one failed or was rejected); an update that a client's departure cut short is lost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedloom.core.task import FIT, MODEL, Result, Task
from fedloom.strategies.base import Exchange, RoundContext, RoundPlan, Strategy, StrategyState

log = logging.getLogger("fedloom")

NOW = "fedbuff/now"
"""The simulated time (seconds) the server has reached: shape (1,)."""
VERSION = "fedbuff/version"
"""The model version: server steps taken so far, shape (1,)."""
PENDING = "fedbuff/pending"
"""Updates still in flight, one row each: shape (P, model size)."""
PENDING_META = "fedbuff/pending_meta"
"""Per pending update: (client id, model version it started from, time it arrives)."""


class VirtualClock(Protocol):
    """What FedBuff asks of simulated clients (``fedloom.server.clock.ClientClock``)."""

    epochs: int
    """Local epochs when the task config names none."""

    def available(self, clients: Sequence[int], at: float) -> list[int]: ...

    def next_online(self, clients: Sequence[int], at: float) -> float: ...

    def online_until(self, client: int, at: float) -> float | None: ...

    def local_epochs(self, client: int, epochs: int) -> int: ...

    def task_seconds(self, client: int, bytes_down: int, bytes_up: int, epochs: int) -> float: ...


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
class _Flight:
    """A client at work: from which model version, when it arrives or drops out."""

    client: int
    version: int
    finish: float
    dropped: bool = False
    row: int = -1  # its row of PENDING when it was trained in an earlier round
    epochs: int = 0

    def key(self) -> tuple[float, int, int]:
        return (self.finish, self.version, self.client)


@dataclass
class FedBuff(Strategy):
    buffer_size: int = 10
    concurrency: int = 20
    clock: VirtualClock | None = None

    name = "fedbuff"
    needs_individual_updates = (
        "fedbuff weights each update by its own staleness as it arrives, with no cohort that "
        "uploads together"
    )
    mode = "train"

    def init_state(self, params: np.ndarray) -> StrategyState:
        if self.clock is None:  # a deployment: what is in flight lives in the engine
            return {VERSION: np.zeros(1, np.int64)}
        return {
            NOW: np.zeros(1, np.float64),
            VERSION: np.zeros(1, np.int64),
            PENDING: np.zeros((0, params.size), np.float32),
            PENDING_META: np.zeros((0, 3), np.float64),
        }

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        if self.clock is None:
            return self._without_barrier(ctx)
        return self._on_the_clock(ctx, self.clock)

    def _without_barrier(self, ctx: RoundContext) -> RoundPlan:
        """One server step in a deployment: keep C clients at work, each from the model current
        when it starts, and step once K updates have arrived."""
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
        short = False
        while len(updates) < self.buffer_size:
            busy = started | {t.client_id for t in flying}
            idle = [c for c in ctx.eligible if c not in busy]
            free = self.concurrency - len(flying)
            chosen: list[int] = []
            if free > 0 and idle:
                picked = ctx.rng.choice(np.asarray(idle), size=min(free, len(idle)), replace=False)
                chosen = sorted(int(c) for c in picked)
            if not chosen and not flying:
                short = True
                break
            started.update(chosen)
            tasks = [
                Task(FIT, ctx.round, cid, config, {MODEL: ctx.model.digest}, ctx.upload())
                for cid in chosen
            ]
            exchange = Exchange(tasks, [ctx.model], keep, until=self.buffer_size - len(updates))
            yield exchange
            flying = exchange.in_flight
            started.update(t.client_id for t in exchange.ended if t.client_id not in kept)
        ctx.metrics.update(in_flight=float(len(flying)))
        return self._step(ctx, version, updates, staleness, short)

    def _on_the_clock(self, ctx: RoundContext, clock: VirtualClock) -> RoundPlan:
        """One server step in simulation, played forward on the virtual clock."""
        version = int(ctx.state[VERSION][0])
        started = now = float(ctx.state[NOW][0])
        meta = ctx.state[PENDING_META]
        flights = [
            _Flight(int(c), int(v), float(f), row=i) for i, (c, v, f) in enumerate(meta.tolist())
        ]
        fresh: list[_Flight] = []  # started this round, from ``version``
        config = self.fit_config(ctx)
        base_epochs = int(config.get("epochs", clock.epochs))
        bytes_down = len(ctx.model.payload)
        bytes_up = ctx.upload().max_bytes()

        def idle() -> list[int]:
            # a client trains at most once per model version: a second run from the same
            # model would only repeat its first
            busy = {f.client for f in flights} | {f.client for f in fresh}
            return [c for c in ctx.eligible if c not in busy]

        def start_clients(t: float) -> None:
            free = self.concurrency - len(flights)
            online = clock.available(idle(), t)
            if free <= 0 or not online:
                return
            chosen = ctx.rng.choice(np.asarray(online), size=min(free, len(online)), replace=False)
            for cid in sorted(int(c) for c in chosen):
                epochs = clock.local_epochs(cid, base_epochs)
                finish = t + clock.task_seconds(cid, bytes_down, bytes_up, epochs)
                leaves = clock.online_until(cid, t)
                assert leaves is not None  # available at t
                flight = _Flight(cid, version, min(finish, leaves), leaves < finish, epochs=epochs)
                flights.append(flight)
                fresh.append(flight)

        buffer: list[_Flight] = []
        dropouts = 0
        short = False  # the buffer cannot fill: no idle client is ever online again
        start_clients(now)
        while len(buffer) < self.buffer_size:
            if not flights:
                # nobody at work: wait for an idle client to come online, if one ever does
                later = clock.next_online(idle(), now)
                if not math.isfinite(later):
                    short = True
                    break
                now = later
                start_clients(now)
                continue
            arrived = min(flights, key=_Flight.key)
            flights.remove(arrived)
            now = arrived.finish
            if arrived.dropped:
                dropouts += 1
            else:
                buffer.append(arrived)
            if len(buffer) < self.buffer_size:
                start_clients(now)

        trained = [f for f in fresh if not f.dropped]
        uploads: dict[int, np.ndarray] = {}

        def keep(result: Result, vec: np.ndarray | None) -> None:
            if vec is not None:
                uploads[result.task.client_id] = vec

        tasks = [
            Task(
                FIT,
                ctx.round,
                f.client,
                {**config, "epochs": f.epochs},
                {MODEL: ctx.model.digest},
                ctx.upload(),
            )
            for f in sorted(trained, key=lambda f: f.client)
        ]
        yield Exchange(tasks, [ctx.model], keep)

        pending = ctx.state[PENDING]

        def update_of(f: _Flight) -> np.ndarray | None:
            return pending[f.row] if f.row >= 0 else uploads.get(f.client)

        usable = [(f, u) for f in buffer if (u := update_of(f)) is not None]
        still = [(f, u) for f in flights if not f.dropped and (u := update_of(f)) is not None]
        ctx.state[PENDING] = (
            np.stack([u for _, u in still]).astype(np.float32)
            if still
            else np.zeros((0, ctx.spec.size), np.float32)
        )
        ctx.state[PENDING_META] = np.array(
            [(f.client, f.version, f.finish) for f, _ in still], np.float64
        ).reshape(-1, 3)
        ctx.state[NOW] = np.array([now], np.float64)
        staleness = [version - f.version for f, _ in usable]
        ctx.metrics.update(
            sim_seconds=now - started,
            sim_time=now,
            dropouts=float(dropouts),
            in_flight=float(len(still)),
        )
        return self._step(ctx, version, [u for _, u in usable], staleness, short, len(buffer))

    def _step(
        self,
        ctx: RoundContext,
        version: int,
        updates: list[np.ndarray],
        staleness: list[int],
        short: bool,
        arrived: int | None = None,
    ) -> np.ndarray | None:
        """The buffered update of model version ``version`` (None: too few to step on).
        ``short``: the buffer could not fill; ``arrived``: the updates that came back, usable or
        not (default: the usable ones)."""
        ctx.state[VERSION] = np.array([version + 1], np.int64)
        if short:
            log.warning(
                "fedbuff: %d of %d updates arrived at model version %d: every other client has "
                "trained on it or is never online again (strategy.buffer_size is more than the "
                "clients can give)",
                len(updates) if arrived is None else arrived,
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
