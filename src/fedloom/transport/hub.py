"""The server's view of connected clients: sessions, task inboxes, and results waiting for the
engine. Shared, under one lock, by the gRPC handler threads and the coordinator's thread.

A session exists from ``Join`` until ``Leave``, a newer ``Join`` under the same name, or silence for
longer than the heartbeat timeout. A task handed to a session that goes away fails at once, so a
round never waits for a client that is known to be gone.

Blobs (models, control variates) are held by the batch whose tasks name them, from ``dispatch``
until ``close_batch``, and served by content hash to the clients of those tasks only. Nothing is
kept for a closed batch: its tasks take no more results, so a straggler has no use for its blobs,
and the server holds at most the blobs of the batches that are running.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedloom.core.task import MODEL, Blob, Blobs, Result, Task

log = logging.getLogger("fedloom.server")


@dataclass
class Session:
    session_id: str
    name: str
    client_id: int
    peer: str
    last_seen: float
    task_kinds: frozenset[str] = frozenset()
    ready: bool = False
    num_examples: int = 0
    num_test_examples: int = 0
    inbox: deque[PendingTask] = field(default_factory=deque)


@dataclass
class ClientTally:
    """What the hub has seen of one client over the run, for ``Hub.client_table``."""

    name: str
    last_seen: float = 0.0  # time.monotonic() of its last call, kept after it disconnects
    rounds: set[int] = field(default_factory=set)  # rounds it was handed a task in
    results: int = 0  # results accepted into a round
    failures: int = 0  # results that reported an error
    dropped: int = 0  # tasks lost to a disconnect or the deadline
    rejected: int = 0
    last_rejection: str | None = None


@dataclass
class PendingTask:
    """A dispatched task until its result arrives or its batch closes.

    ``blobs`` are the blobs the task names, by role: the service describes them to the client and
    checks an upload against the model it was computed on.
    """

    task_id: str
    task: Task
    session_id: str
    blobs: Mapping[str, Blob]
    batch: Batch
    deadline_seconds: float
    done: bool = False
    handed_out: bool = False

    @property
    def model(self) -> Blob | None:
        return self.blobs.get(MODEL)


@dataclass
class Completion:
    """A finished task as the engine sees it: the result, and the reason it was rejected (if)."""

    task: Task
    result: Result
    rejected: str | None = None
    dropped: bool = False


class Batch:
    """The tasks of one ``Engine.run`` call (or of one ``start`` of an asynchronous engine), the
    queue their completions arrive on, and the blobs (by digest) its handed-out tasks name.
    Batches may share one queue: an asynchronous engine reads the completions of every batch it
    started on one."""

    def __init__(self, completions: queue.Queue[Completion] | None = None) -> None:
        self.completions: queue.Queue[Completion] = (
            queue.Queue() if completions is None else completions
        )
        self.pending: dict[str, PendingTask] = {}
        self.blobs: dict[str, Blob] = {}
        self.started = time.monotonic()

    @property
    def open_tasks(self) -> int:
        return sum(1 for p in self.pending.values() if not p.done)


class Hub:
    """Sessions and tasks of the running server.

    ``client_id_for(name)`` gives a client's stable integer id (the state store persists it, so a
    client keeps its id across reconnects and server restarts).
    """

    def __init__(
        self,
        client_id_for: Callable[[str], int],
        heartbeat_timeout: float,
        on_client_seen: Callable[[Session], None] | None = None,
    ) -> None:
        self._client_id_for = client_id_for
        self.heartbeat_timeout = heartbeat_timeout
        self._on_client_seen = on_client_seen
        self._lock = threading.Condition()
        self._sessions: dict[str, Session] = {}
        self._by_name: dict[str, str] = {}
        self._open: list[Batch] = []
        self._told_finished: set[str] = set()
        self._tallies: dict[int, ClientTally] = {}
        self._bytes_down = 0
        self._bytes_up = 0
        self.finished = False

    # -- sessions ---------------------------------------------------------------------------
    def join(self, name: str, peer: str, task_kinds: Sequence[str]) -> Session:
        """Open a session for ``name``; an older session of the same name is closed."""
        client_id = self._client_id_for(name)
        with self._lock:
            old = self._by_name.get(name)
            if old is not None:
                self._close(old, "the client joined again (it restarted or lost its connection)")
            session = Session(
                session_id=secrets.token_hex(16),
                name=name,
                client_id=client_id,
                peer=peer,
                last_seen=time.monotonic(),
                task_kinds=frozenset(task_kinds),
            )
            self._sessions[session.session_id] = session
            self._by_name[name] = session.session_id
            self._tally(client_id, name)
        log.info("client %s (id %d) joined from %s", name, client_id, peer)
        return session

    def session(self, session_id: str) -> Session | None:
        with self._lock:
            s = self._sessions.get(session_id)
            if s is not None:
                s.last_seen = time.monotonic()
            return s

    def ready(self, session_id: str, num_examples: int, num_test_examples: int) -> None:
        with self._lock:
            s = self._sessions[session_id]
            s.num_examples, s.num_test_examples, s.ready = num_examples, num_test_examples, True
        if self._on_client_seen is not None:
            self._on_client_seen(s)
        log.info(
            "client %s ready: %d training examples, %d test",
            s.name,
            num_examples,
            num_test_examples,
        )

    def leave(self, session_id: str) -> None:
        with self._lock:
            if session_id in self._sessions:
                self._close(session_id, "the client left")

    def reap(self) -> list[str]:
        """Close sessions silent for longer than the heartbeat timeout; returns their names."""
        now = time.monotonic()
        gone = []
        with self._lock:
            for sid, s in list(self._sessions.items()):
                if now - s.last_seen > self.heartbeat_timeout:
                    gone.append(s.name)
                    self._close(sid, f"no heartbeat for {now - s.last_seen:.1f} s (client dropped)")
        return gone

    def _close(self, session_id: str, why: str) -> None:
        s = self._sessions.pop(session_id)
        self._tally(s.client_id, s.name).last_seen = s.last_seen
        if self._by_name.get(s.name) == session_id:
            del self._by_name[s.name]
        for p in s.inbox:
            self._complete(p, Result(p.task, error=f"client {s.name}: {why}"), dropped=True)
        s.inbox.clear()
        log.info("client %s disconnected: %s", s.name, why)
        self._lock.notify_all()

    def ready_clients(self) -> dict[int, Session]:
        """Sessions that reported their data, by client id."""
        with self._lock:
            return {s.client_id: s for s in self._sessions.values() if s.ready}

    # -- tasks ------------------------------------------------------------------------------
    def dispatch(
        self,
        tasks: Sequence[Task],
        blobs: Blobs,
        deadline_seconds: float,
        completions: queue.Queue[Completion] | None = None,
    ) -> Batch:
        """Hand each task to its client's session; ``blobs`` holds every blob the tasks name, by
        digest. A task whose client is not connected, does not run its kind, or names a blob
        that is not in ``blobs`` fails at once. Completions go to ``completions`` when given (a
        queue several batches share), else to a queue of the batch's own."""
        batch = Batch(completions)
        with self._lock:
            by_id = {s.client_id: s for s in self._sessions.values() if s.ready}
            for task in tasks:
                session = by_id.get(task.client_id)
                missing = [(r, d) for r, d in task.blobs.items() if d not in blobs]
                pending = PendingTask(
                    task_id=secrets.token_hex(8),
                    task=task,
                    session_id=session.session_id if session else "",
                    blobs={r: blobs[d] for r, d in task.blobs.items() if d in blobs},
                    batch=batch,
                    deadline_seconds=deadline_seconds,
                )
                batch.pending[pending.task_id] = pending
                if missing:
                    role, digest = missing[0]
                    self._complete(
                        pending,
                        Result(
                            task,
                            error=f"the {role!r} blob {digest[:12]} of the task was not provided",
                        ),
                    )
                elif session is None:
                    self._complete(
                        pending,
                        Result(task, error=f"client {task.client_id} is not connected"),
                        dropped=True,
                    )
                elif task.kind not in session.task_kinds:
                    self._complete(
                        pending,
                        Result(
                            task,
                            error=f"client {session.name} does not run {task.kind!r} tasks (it "
                            f"runs {sorted(session.task_kinds)}; register the stage in its --app)",
                        ),
                    )
                else:
                    self._tally(session.client_id, session.name).rounds.add(task.round)
                    session.inbox.append(pending)
                    batch.blobs.update({b.digest: b for b in pending.blobs.values()})
            self._open.append(batch)
            self._lock.notify_all()
        return batch

    def close_batch(self, batch: Batch) -> list[PendingTask]:
        """Stop accepting results for ``batch`` and release its blobs; returns the tasks that
        never completed (their clients' uploads for them are refused from now on)."""
        with self._lock:
            if batch in self._open:
                self._open.remove(batch)
            left = [p for p in batch.pending.values() if not p.done]
            for p in left:
                p.done = True
                s = self._sessions.get(p.session_id)
                if s is not None and p in s.inbox:
                    s.inbox.remove(p)
            return left

    def poll(self, session_id: str, wait: float) -> PendingTask | None:
        """The session's next task, waiting up to ``wait`` seconds. The task stays in the inbox
        (so it fails if the session drops) until a result comes back for it."""
        end = time.monotonic() + wait
        with self._lock:
            while True:
                s = self._sessions.get(session_id)
                if s is None or self.finished:
                    return None
                s.last_seen = time.monotonic()
                for p in s.inbox:
                    if not p.done and not p.handed_out:
                        p.handed_out = True
                        return p
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)

    def pending(self, session_id: str, task_id: str) -> PendingTask | None:
        with self._lock:
            s = self._sessions.get(session_id)
            if s is None:
                return None
            return next((p for p in s.inbox if p.task_id == task_id and not p.done), None)

    def complete(self, pending: PendingTask, result: Result, rejected: str | None = None) -> bool:
        """Deliver a result to the engine; False when the task was already closed (deadline)."""
        with self._lock:
            if pending.done:
                return False
            s = self._sessions.get(pending.session_id)
            if s is not None and pending in s.inbox:
                s.inbox.remove(pending)
            self._complete(pending, result, rejected=rejected)
            return True

    def _complete(
        self,
        pending: PendingTask,
        result: Result,
        *,
        rejected: str | None = None,
        dropped: bool = False,
    ) -> None:
        pending.done = True
        pending.batch.completions.put(Completion(pending.task, result, rejected, dropped))
        tally = self._tallies.get(pending.task.client_id)
        if tally is None:  # a task for a client that never joined
            return
        if rejected is not None:
            tally.rejected += 1
            tally.last_rejection = rejected
        elif dropped:
            tally.dropped += 1
        elif not result.ok:
            tally.failures += 1
        else:
            tally.results += 1

    def _tally(self, client_id: int, name: str) -> ClientTally:
        tally = self._tallies.get(client_id)
        if tally is None:
            tally = self._tallies[client_id] = ClientTally(name, last_seen=time.monotonic())
        tally.name = name
        return tally

    def client_table(self) -> list[dict[str, Any]]:
        """A read-only snapshot of every client seen this run, by client id: connected (a live
        session) and ready, its address, when it was last seen (Unix time), the rounds it was
        handed a task in, its results, failures, dropped tasks, and rejected updates with the
        reason of the latest. For a dashboard; copies only, nothing here changes the hub."""
        now_mono, now = time.monotonic(), time.time()
        with self._lock:
            sessions = {s.client_id: s for s in self._sessions.values()}
            rows = []
            for cid, t in sorted(self._tallies.items()):
                s = sessions.get(cid)
                seen = s.last_seen if s is not None else t.last_seen
                rows.append(
                    {
                        "client_id": cid,
                        "name": t.name,
                        "connected": s is not None,
                        "ready": bool(s and s.ready),
                        "peer": s.peer if s is not None else None,
                        "num_examples": s.num_examples if s is not None else None,
                        "last_seen": now - (now_mono - seen),
                        "rounds_joined": len(t.rounds),
                        "results": t.results,
                        "failures": t.failures,
                        "dropped": t.dropped,
                        "rejected": t.rejected,
                        "last_rejection": t.last_rejection,
                    }
                )
            return rows

    # -- traffic ----------------------------------------------------------------------------
    def count_down(self, n: int) -> None:
        """``n`` payload bytes of a blob were streamed to a client."""
        with self._lock:
            self._bytes_down += n

    def count_up(self, n: int) -> None:
        """``n`` payload bytes of an update were received from a client."""
        with self._lock:
            self._bytes_up += n

    def traffic(self) -> tuple[int, int]:
        """Payload bytes streamed down and received up since the hub started."""
        with self._lock:
            return self._bytes_down, self._bytes_up

    def blob(self, digest: str, session_id: str | None = None) -> Blob | None:
        """The blob with content hash ``digest`` if a running batch holds it. With
        ``session_id``, only if one of that session's open tasks names it: a client cannot
        download what was sent to another client."""
        with self._lock:
            if session_id is not None:
                s = self._sessions.get(session_id)
                if s is None:
                    return None
                return next(
                    (
                        b
                        for p in s.inbox
                        if not p.done
                        for b in p.blobs.values()
                        if b.digest == digest
                    ),
                    None,
                )
            return next((b.blobs[digest] for b in self._open if digest in b.blobs), None)

    def finish(self) -> None:
        """The run is over: pollers are told to exit."""
        with self._lock:
            self.finished = True
            self._lock.notify_all()

    def told_finished(self, session_id: str) -> None:
        """The session has been told that the run is over."""
        with self._lock:
            self._told_finished.add(session_id)

    def unnotified(self) -> int:
        """Sessions not yet told that the run is over."""
        with self._lock:
            return len(set(self._sessions) - self._told_finished)
