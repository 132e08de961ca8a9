"""The Ray engine: clients run in a pool of Ray actors, on this machine or across a cluster.

Use it for client code that cannot be vectorised, and for simulations bigger than one machine. Ray is
imported and started only when the engine first runs, never when fedloom is imported.

How work travels:

- ``client_fn`` (and whatever it closes over, such as the dataset) goes to the object store once;
  every actor deserialises it once, when it starts. Nothing is pickled per task.
- Every blob (the global model, a control variate) goes to the object store once per content hash
  (``ray.put``), and each actor fetches and decodes it once per hash, whatever the number of tasks
  it runs.
- Client state stays with the driver (the engine's ``ClientStateStore``): each task travels with
  its client's state and its result brings the new state back, so it does not matter which actor
  runs a client, and a replaced worker loses nothing.
- Tasks are sent in small batches (a few per actor and round) to keep Ray's per-call overhead far
  below the clients' training time; the engine hands out the next batch to whichever actor is free,
  and yields results in completion order (``ray.wait``).

Failures: a client that raises gives an error ``Result`` (``execute_task``). A worker process that
dies (a segfault, ``os._exit``, the OOM killer, a lost node) is replaced. Its unfinished tasks are run
again, each alone on an idle actor, so only a task that kills its worker a second time comes back as
an error ``Result``; the round goes on either way. (A hung client is not detected here: deadlines
are the coordinator's business.)

Multi-node use::

    # on the head machine
    ray start --head --port=6379
    # on every other machine
    ray start --address=HEAD_HOST:6379
    # then, anywhere in the cluster
    fedloom run config.yaml --set engine.name=ray --set engine.address=auto
    # (or engine.address=HEAD_HOST:6379 from a machine that is not a cluster node)

Every node needs the same Python environment with fedloom and the client code's imports installed.
``engine.num_workers`` defaults to the number of CPUs in the cluster. With ``engine.address`` unset,
the engine starts a private local Ray instance (no dashboard, quiet logging) and shuts it down in
``close()``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedloom.client.execute import DecodedBlobs, error_result, execute_task, state_round
from fedloom.client.state import ClientStateStore, State
from fedloom.core.task import Blob, Blobs, Result, Task
from fedloom.engines.base import ClientFn, keep_state
from fedloom.errors import ConfigError

log = logging.getLogger("fedloom")


class _ClientWorker:
    """The body of one Ray actor: holds ``client_fn`` and the blobs it has fetched, by hash."""

    keep_blobs = 8

    def __init__(self, client_fn: ClientFn, registries: Registries) -> None:
        install_registries(registries)
        # Arrays that come out of Ray's object store are read-only views of shared memory, which
        # saves one copy of the dataset per worker; torch warns once per process when it wraps
        # one. Clients only read their data, so the warning says nothing here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.client_fn = client_fn
        self.blobs: dict[str, Blob] = {}
        self.decoded = DecodedBlobs()
        self.decodes = 0

    def run(self, refs: dict[str, Any], tasks: list[tuple[Task, State]]) -> list[Result]:
        # ``refs`` maps digests to object refs; refs nested in a dict are not fetched by Ray on the
        # call, so a blob is fetched only the first time this actor needs its hash.
        needed = {d for task, _ in tasks for d in task.blobs.values()}
        missing = [d for d in needed if d not in self.blobs and d in refs]
        if missing:
            import ray

            for digest, blob in zip(missing, ray.get([refs[d] for d in missing]), strict=True):
                self.blobs[digest] = blob
                self.decodes += 1
            while len(self.blobs) > self.keep_blobs:
                self.blobs.pop(next(b for b in self.blobs if b not in needed))
        out = []
        for task, state in tasks:
            try:
                client = self.client_fn(task.client_id)
            except Exception as exc:  # a broken client_fn fails its task, not the round
                out.append(error_result(task, exc))
                continue
            out.append(execute_task(client, task, self.blobs, state, self.decoded))
        return out

    def stats(self) -> dict[str, Any]:
        """Counters for tests and diagnostics."""
        return {"decodes": self.decodes, "digests": sorted(self.blobs)}


Registries = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]


def registries() -> Registries:
    """The task kinds, local-training hooks and transforms registered in this process, so that
    workers run what the driver's strategies name (including ones a user registered)."""
    from fedloom.client import execute, local
    from fedloom.transforms import base

    return dict(execute.STAGES), dict(local.HOOKS), dict(base.TRANSFORMS)


def install_registries(snapshot: Registries) -> None:
    from fedloom.client import execute, local
    from fedloom.transforms import base

    stages, hooks, transforms = snapshot
    execute.STAGES.update(stages)
    local.HOOKS.update(hooks)
    base.TRANSFORMS.update(transforms)


@dataclass
class _Call:
    """One batch of tasks in flight on one actor."""

    actor: Any
    tasks: list[Task]
    retry: bool = False


@dataclass
class _Pool:
    actors: list[Any] = field(default_factory=list)
    # id(dead actor handle) -> (the dead handle, kept so its id is not reused; its replacement),
    # so a second failed call on the same dead actor does not start a second replacement.
    successors: dict[int, tuple[Any, Any]] = field(default_factory=dict)


class RayEngine:
    """Runs clients in ``num_workers`` Ray actors (default: one per CPU that Ray sees).

    ``address``: None starts a private local Ray instance; ``"auto"`` joins the cluster started on
    this machine with ``ray start``; ``"HOST:6379"`` joins a remote head node. If Ray is already
    initialised in this process, the engine uses that instance and leaves it running on close.
    """

    name = "ray"
    #: Batches per actor per round: more balances load better, fewer cut Ray's per-call overhead.
    calls_per_worker = 4

    def __init__(
        self, client_fn: ClientFn, address: str | None = None, num_workers: int | None = None
    ) -> None:
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.client_fn = client_fn
        self.address = address
        self.num_workers = num_workers
        self._owns_ray = False
        self._actor_cls: Any = None
        self._client_fn_ref: Any = None
        self._registries_ref: Any = None
        self._pool = _Pool()
        self._refs: dict[str, Any] = {}
        self.states = ClientStateStore()

    # -- lifecycle ---------------------------------------------------------------------------

    def _start(self) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("engine.name='ray' needs Ray: pip install 'fedloom[ray]'") from None

        if not ray.is_initialized():
            try:
                # "local" starts a private instance even when RAY_ADDRESS points elsewhere.
                ray.init(
                    address=self.address or "local",
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                )
            except ConnectionError as exc:
                raise ConfigError(
                    f"engine.address={self.address!r}: no Ray cluster there ({exc}); start one "
                    "with 'ray start --head', or unset engine.address for a local instance"
                ) from None
            self._owns_ray = True
        cpus = float(ray.cluster_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call]
        workers = self.num_workers or max(1, int(cpus))
        # More workers than CPUs would leave actors waiting for a CPU forever; share the CPUs.
        per_actor = min(1.0, cpus / workers) if cpus > 0 else 0.0
        self._actor_cls = ray.remote(num_cpus=per_actor, max_restarts=0)(_ClientWorker)
        self._client_fn_ref = ray.put(self.client_fn)
        self._registries_ref = ray.put(registries())
        self._pool = _Pool([self._new_actor() for _ in range(workers)])
        log.info("ray engine: %d workers, %.2f CPU each", workers, per_actor)

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(self._client_fn_ref, self._registries_ref)

    def close(self) -> None:
        """Stop the actors; shut Ray down only if this engine started it."""
        if self._actor_cls is None:
            return
        import ray

        if ray.is_initialized():
            for actor in self._pool.actors:
                try:
                    ray.kill(actor)
                except Exception as exc:  # already gone; nothing left to stop
                    log.debug("ray engine: could not kill an actor: %s", exc)
            if self._owns_ray:
                ray.shutdown()
        self._pool = _Pool()
        self._actor_cls = self._client_fn_ref = None
        self._refs = {}
        self._owns_ray = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running a batch of tasks --------------------------------------------------------------

    def _blob_refs(self, tasks: Sequence[Task], blobs: Blobs) -> dict[str, Any]:
        """Object refs of the blobs these tasks name; each hash is put in the store once."""
        import ray

        needed = {d for t in tasks for d in t.blobs.values() if d in blobs}
        self._refs = {d: self._refs[d] if d in self._refs else ray.put(blobs[d]) for d in needed}
        return self._refs

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        """Execute ``tasks`` on the actor pool; yield results as batches complete."""
        if not tasks:
            return
        if self._actor_cls is None:
            self._start()
        import ray
        from ray.exceptions import RayActorError, RayError

        refs = self._blob_refs(tasks, blobs)
        size = max(1, math.ceil(len(tasks) / (len(self._pool.actors) * self.calls_per_worker)))
        queue: deque[tuple[list[Task], bool]] = deque(
            (list(tasks[i : i + size]), False) for i in range(0, len(tasks), size)
        )
        in_flight: dict[Any, _Call] = {}
        busy: dict[int, int] = {}  # id(actor) -> calls in flight on it

        def submit(actor: Any) -> None:
            # A retried task runs alone on an idle actor, so that a crash is blamed on the task
            # that caused it and never on one queued behind it.
            n = busy.get(id(actor), 0)
            pick = next((i for i, (_, retry) in enumerate(queue) if n == 0 or not retry), None)
            if pick is None:
                return
            batch, retry = queue[pick]
            del queue[pick]
            with_state = [(t, self.states.get(t.client_id, state_round(t))) for t in batch]
            in_flight[actor.run.remote(refs, with_state)] = _Call(actor, batch, retry)
            busy[id(actor)] = n + 1

        # Two batches per actor keep it busy while the driver handles the previous result.
        for _ in range(2):
            for actor in self._pool.actors:
                submit(actor)
        while in_flight:
            [done], _ = ray.wait(list(in_flight), num_returns=1)
            call = in_flight.pop(done)
            busy[id(call.actor)] -= 1
            actor = call.actor
            try:
                results: list[Result] = ray.get(done)
                # One result per task, in order; hand back the caller's own Task objects rather
                # than the copies that travelled.
                for task, result in zip(call.tasks, results, strict=True):
                    result.task = task
            except RayActorError as exc:
                results = self._worker_died(call, exc, queue)
                actor = self._replace(call.actor)
            except RayError as exc:  # e.g. a result that cannot be deserialised
                results = [Result(t, error=f"ray: {type(exc).__name__}: {exc}") for t in call.tasks]
            submit(actor)
            for other in self._pool.actors:  # idle actors take the retries a crash left behind
                if queue and not busy.get(id(other)):
                    submit(other)
            for result in results:
                yield keep_state(self.states, result)

    def _worker_died(
        self, call: _Call, exc: Exception, queue: deque[tuple[list[Task], bool]]
    ) -> list[Result]:
        ids = [t.client_id for t in call.tasks]
        if len(call.tasks) > 1 or not call.retry:
            # Any of these tasks, or something else entirely, may have killed the worker: run each
            # again alone, so only the task that kills a worker again is reported as failed.
            log.warning(
                "ray engine: a worker died running clients %s; retrying them one by one", ids
            )
            queue.extendleft(([t], True) for t in reversed(call.tasks))
            return []
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [Result(call.tasks[0], error=f"worker died running client {ids[0]}: {reason}")]

    def _replace(self, dead: Any) -> Any:
        """A fresh actor in place of ``dead`` (the pool keeps its size)."""
        if id(dead) not in self._pool.successors:
            actor = self._new_actor()
            self._pool.actors = [actor if a is dead else a for a in self._pool.actors]
            self._pool.successors[id(dead)] = (dead, actor)
        return self._pool.successors[id(dead)][1]

    def worker_stats(self) -> list[dict[str, Any]]:
        """Per-actor counters (how often each decoded the global params); empty before ``run``."""
        if self._actor_cls is None:
            return []
        import ray

        return list(ray.get([a.stats.remote() for a in self._pool.actors]))
