"""The remote engine: tasks go to client processes over gRPC (``fedloom server``).

The engine hands each task, with the blobs it names, to its client's session in the ``Hub`` and
yields results as the clients upload them, so the coordinator aggregates in a stream exactly as
with the in-process engines. Clients keep their own state (``fedloom.client.deploy``); nothing of
it passes through here. It adds what only a real deployment needs:

- a round deadline: tasks without a result by then end as dropped (an error ``Result``);
- early failure: a task whose client disconnects (no heartbeat, or it left) fails at once;
- over-selection (Bonawitz et al. 2019, "Towards Federated Learning at Scale"): for ``fit`` tasks
  it also asks ``over_selection`` times as many extra connected clients (each a copy of the first
  fit task: the same blobs, config and upload), and stops at the first ``len(tasks)`` accepted
  updates; the stragglers' tasks are cancelled.

``last_stats`` holds the counts of the latest ``run`` for the server's progress line, and
``last_transfer()`` the payload bytes it actually streamed (``MeasuresTransfer``): the hub's traffic
counters between the start and the end of the run. Bytes a straggler streams after its round closed
count toward the next run.

It is also ``Asynchronous``: tasks given to ``start`` stay in flight across exchanges and rounds
(FedBuff without a round barrier), each until its result arrives, its client disconnects, or its
own deadline (``deadline_s`` after it started) passes; ``arrivals`` waits for the next of them to
end. ``last_stats`` then covers one ``start`` and the ``arrivals`` after it, and ``last_transfer()``
the traffic since the previous ``arrivals`` ended (uploads that come in between exchanges count
toward the next one).
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedloom.core.task import FIT, Blobs, Result, Task
from fedloom.engines.base import Transfer
from fedloom.transport.hub import Batch, Completion, Hub


@dataclass
class RemoteRunStats:
    """What happened to the tasks of one ``run`` call."""

    dispatched: int = 0
    over_selected: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0  # the client reported an error
    dropped: int = 0  # the client disconnected, or missed the deadline
    cancelled: int = 0


class RemoteEngine:
    name = "remote"

    def __init__(
        self,
        hub: Hub,
        *,
        deadline_s: float,
        over_selection: float = 0.0,
        seed: int = 0,
        tick_s: float = 0.25,
    ) -> None:
        self.hub = hub
        self.deadline_s = deadline_s
        self.over_selection = over_selection
        self._over_select_next = True
        self.seed = seed
        self.tick_s = tick_s
        self.last_stats = RemoteRunStats()
        self._transfer = Transfer(0, 0)
        # asynchronous tasks: the batches of ``start`` with open tasks, one queue for them all
        self._flying: list[Batch] = []
        self._arrived: queue.Queue[Completion] = queue.Queue()
        self._traffic0 = (0, 0)

    def last_transfer(self) -> Transfer:
        return self._transfer

    def allow_over_selection(self, allowed: bool) -> None:
        """Whether the next ``run`` may ask extra clients (``OverSelects``): the coordinator allows
        it for a round's first stage only."""
        self._over_select_next = allowed

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        stats = RemoteRunStats()
        self.last_stats = stats
        self._transfer = Transfer(0, 0)
        down0, up0 = self.hub.traffic()
        extras = self._over_select(tasks)
        stats.dispatched, stats.over_selected = len(tasks) + len(extras), len(extras)
        batch = self.hub.dispatch([*tasks, *extras], blobs, self.deadline_s)
        deadline = time.monotonic() + self.deadline_s
        try:
            while batch.open_tasks or not batch.completions.empty():
                if extras and stats.accepted >= len(tasks):
                    break  # over-selection: enough updates, stop waiting for stragglers
                left = deadline - time.monotonic()
                if left <= 0 and batch.completions.empty():
                    break
                try:
                    done = batch.completions.get(timeout=max(min(left, self.tick_s), 0.001))
                except queue.Empty:
                    self.hub.reap()
                    continue
                self._count(done, stats)
                yield done.result
        finally:
            leftover = self.hub.close_batch(batch)
            down, up = self.hub.traffic()
            self._transfer = Transfer(down - down0, up - up0)
        for pending in leftover:
            if extras and stats.accepted >= len(tasks):
                stats.cancelled += 1
                continue
            stats.dropped += 1
            yield Result(
                pending.task,
                error=f"no result before the round deadline ({self.deadline_s:g} s)",
            )

    # -- asynchronous tasks (``Asynchronous``) -------------------------------------------------

    def start(self, tasks: Sequence[Task], blobs: Blobs) -> None:
        """Hand ``tasks`` to their clients; they run until they end, whatever exchange or round
        the coordinator is in by then. No over-selection: an asynchronous strategy keeps its own
        number of clients at work."""
        self.last_stats = RemoteRunStats(dispatched=len(tasks))
        if tasks:
            self._flying.append(self.hub.dispatch(tasks, blobs, self.deadline_s, self._arrived))

    def in_flight(self) -> list[Task]:
        """The started tasks that have not ended, in the order they started."""
        return [p.task for b in self._flying for p in b.pending.values() if not p.done]

    def arrivals(self, most: int) -> Iterator[Result]:
        """Wait until a started task ends, then yield it and the others that have ended, at most
        ``most`` (the rest wait for the next call). A task ends with its result, or as dropped
        when its client disconnects or ``deadline_s`` passes since it started. Yields nothing
        when no task is in flight."""
        stats = self.last_stats
        yielded = 0
        try:
            while yielded < most:
                self._expire()
                try:
                    done = self._arrived.get_nowait()
                except queue.Empty:
                    if yielded:
                        break
                    if not self.in_flight():
                        try:  # one may have ended since the first look
                            done = self._arrived.get_nowait()
                        except queue.Empty:
                            break
                    else:
                        try:
                            done = self._arrived.get(timeout=self._until_next_deadline())
                        except queue.Empty:
                            self.hub.reap()
                            continue
                self._count(done, stats)
                yielded += 1
                yield done.result
        finally:
            self._release()
            # since the previous arrivals: an upload that came in while the coordinator was
            # between exchanges (stepping, evaluating) counts toward the next one
            down, up = self.hub.traffic()
            self._transfer = Transfer(down - self._traffic0[0], up - self._traffic0[1])
            self._traffic0 = (down, up)

    def _expire(self) -> None:
        """End the tasks in flight for ``deadline_s`` as dropped (their uploads are refused from
        now on)."""
        now = time.monotonic()
        for batch in [b for b in self._flying if now - b.started >= self.deadline_s]:
            self._flying.remove(batch)
            for p in self.hub.close_batch(batch):
                error = f"no result within {self.deadline_s:g} s (server.round_deadline_s)"
                self._arrived.put(Completion(p.task, Result(p.task, error=error), dropped=True))

    def _until_next_deadline(self) -> float:
        now = time.monotonic()
        nearest = min(b.started + self.deadline_s for b in self._flying) - now
        return max(min(nearest, self.tick_s), 0.001)

    def _release(self) -> None:
        """Close the batches whose tasks have all ended: their blobs are no longer served."""
        for batch in [b for b in self._flying if b.open_tasks == 0]:
            self.hub.close_batch(batch)
            self._flying.remove(batch)

    def _count(self, done: Completion, stats: RemoteRunStats) -> None:
        if done.rejected is not None:
            stats.rejected += 1
        elif done.dropped:
            stats.dropped += 1
        elif not done.result.ok:
            stats.failed += 1
        else:
            stats.accepted += 1

    def _over_select(self, tasks: Sequence[Task]) -> list[Task]:
        fit = [t for t in tasks if t.kind == FIT]
        if not fit or self.over_selection <= 0 or not self._over_select_next:
            return []
        chosen = {t.client_id for t in tasks}
        spare = sorted(
            cid
            for cid, s in self.hub.ready_clients().items()
            if cid not in chosen and s.num_examples > 0 and FIT in s.task_kinds
        )
        k = min(len(spare), math.ceil(self.over_selection * len(fit)))
        if k == 0:
            return []
        rng = np.random.default_rng([self.seed, fit[0].round, 2])
        picked = sorted(int(c) for c in rng.choice(np.asarray(spare), size=k, replace=False))
        template = fit[0]
        return [replace(template, client_id=cid) for cid in picked]

    def close(self) -> None:
        self.hub.finish()
