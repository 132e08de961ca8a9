"""The vectorized engine: a whole cohort of TorchClients trained in lockstep in one process.

Many small clients spend most of their time in per-call overhead: one small matrix product per
layer per minibatch, each dispatched from Python. Stacking every client's copy of the model and
running one ``torch.func.vmap(functional_call)`` step for all of them turns a hundred small products
into one batched product (DESIGN.md, "Where clients run"; issue 3). The numbers match the sequential
engine within float tolerance: same minibatch order from each client's own generator, same loss,
same optimiser recipe (see ``fedloom.engines._vmap_train``).

What runs vectorised: fit tasks of unmodified ``TorchClient``s whose model, loss and data shapes
pass a one-off probe (vmapped gradients equal eager ones on a real minibatch). Everything else runs
exactly as the sequential engine runs it, after one ``VectorizationFallbackWarning`` per cause:

- clients that are not ``TorchClient`` or override its training;
- BatchNorm (running statistics are buffers that training mutates), dropout (its masks come from the
  global RNG, so no per-client stream can reproduce ``TorchClient``), tied parameters;
- anything ``vmap`` rejects: data-dependent control flow, ``.item()``, losses that fail per sample;
- a chunk whose vectorised run raises (a bad label, say): it is rerun client by client, so a faulty
  client yields its own error Result and the others their normal ones.

Evaluate tasks always take the sequential path. The cohort is split into chunks that fit
``max_memory_mb`` (an estimate per client from the probe), grouped by step count; results stream out
chunk by chunk, in task order within a chunk.
"""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from fedloom.client.base import Client
from fedloom.client.torch_client import LocalTraining, TorchClient, client_seed
from fedloom.core.params import Params
from fedloom.core.task import FIT, GlobalParams, Result, Task
from fedloom.engines._vmap_model import (
    CohortModel,
    NotVectorizable,
    architecture_key,
    loss_key,
    one_line,
)
from fedloom.engines._vmap_train import bytes_per_client, client_steps, train_chunk
from fedloom.engines.base import ClientFn, execute_task

__all__ = ["VectorizationFallbackWarning", "VectorizedEngine"]

log = logging.getLogger("fedloom")

# Above this many parameters per client the stacked cohort's per-client weights dominate memory
# traffic; on a 2-core CPU the McMahan CNN (1.66M) trains 1.3x slower vectorised than one by one,
# while an MLP of 25k parameters trains 3x faster (bench/README.md). Raise it on a GPU.
DEFAULT_MAX_PARAMS = 1_000_000
_PROBE_CANDIDATES = 3  # clients tried before a group is left to the sequential path for a round
_PROBE_CACHE = 256  # architectures remembered; a new loss closure per client must not leak memory


class VectorizationFallbackWarning(UserWarning):
    """Some clients ran sequentially instead of vectorised; the message says why."""


class _Group(NamedTuple):
    """Clients that can share a chunk: same model function, loss, data shapes and training."""

    probe: Hashable
    training: LocalTraining
    gradient: bool


@dataclass(frozen=True)
class _Job:
    position: int
    task: Task
    client: TorchClient
    seed: int
    steps: int


@dataclass(frozen=True)
class _Probed:
    model: CohortModel
    activation_bytes_per_sample: float


class VectorizedEngine:
    """Trains fit tasks of TorchClients as stacked cohorts with ``torch.func``.

    Parameters
    ----------
    client_fn:
        ``client_id -> Client``, as for every engine.
    max_memory_mb:
        Memory budget for one chunk of clients trained together: stacked parameters, gradients,
        optimiser state, pre-gathered minibatches and activations (estimated per client).

    ``Result.seconds`` of a vectorised client is its share of its chunk's wall time.
    """

    name = "vectorized"

    def __init__(
        self,
        client_fn: ClientFn,
        max_memory_mb: float = 1024.0,
        max_params: int | None = DEFAULT_MAX_PARAMS,
    ) -> None:
        if not max_memory_mb > 0:
            raise ValueError(f"max_memory_mb must be > 0, got {max_memory_mb}")
        self.client_fn = client_fn
        self.max_memory_mb = float(max_memory_mb)
        self.max_params = max_params
        self._decoded_cache: tuple[str, Params, torch.Tensor] | None = None
        self._probes: OrderedDict[Hashable, _Probed | str] = OrderedDict()
        self._warned: set[Hashable] = set()

    def run(self, tasks: Sequence[Task], global_params: GlobalParams) -> Iterator[Result]:
        params, vec = self._decoded(global_params)
        groups: dict[_Group, list[_Job]] = {}
        sequential: list[tuple[Task, Client | None]] = []
        too_large = self.max_params is not None and global_params.spec.size > self.max_params
        if too_large:
            self._note_too_large(global_params.spec.size)
        for position, task in enumerate(tasks):
            if task.kind != FIT or too_large:
                sequential.append((task, None))
                continue
            try:
                client = self.client_fn(task.client_id)
            except Exception as exc:  # a broken client factory fails that client only
                yield _error(task, exc)
                continue
            planned = self._plan(position, task, client)
            if planned is None:
                sequential.append((task, client))
            else:
                groups.setdefault(planned[0], []).append(planned[1])

        for group, jobs in groups.items():
            probed = self._probe(group, jobs, global_params, vec)
            if probed is None:
                sequential.extend((job.task, job.client) for job in jobs)
                continue
            yield from self._run_group(probed, group, jobs, params, vec, global_params)

        for task, maybe_client in sequential:
            try:
                client = self.client_fn(task.client_id) if maybe_client is None else maybe_client
            except Exception as exc:
                yield _error(task, exc)
                continue
            yield execute_task(client, task, params, global_params)

    def close(self) -> None:
        self._decoded_cache = None
        self._probes.clear()

    def _plan(self, position: int, task: Task, client: Client) -> tuple[_Group, _Job] | None:
        """The group this fit task can train with, or None for the sequential path."""
        if not isinstance(client, TorchClient):
            self._warn(
                ("client type", type(client)),
                f"clients of type {type(client).__name__} are not TorchClients",
            )
            return None
        overridden = [
            m
            for m in ("fit", "_train", "_full_gradient")
            if getattr(type(client), m) is not getattr(TorchClient, m)
        ]
        if overridden:
            self._warn(
                ("client type", type(client)),
                f"{type(client).__name__} overrides TorchClient.{', '.join(overridden)}",
            )
            return None
        config = task.config
        try:
            training = client.training.updated(config)
            seed = client_seed(
                int(config.get("seed", client.seed)), int(config.get("round", 0)), client.client_id
            )
            x, y = np.asarray(client.x_train), np.asarray(client.y_train)
        except Exception:
            return None  # TorchClient.fit raises the same; the sequential path reports it
        if not (
            training.optimizer in ("sgd", "adam")
            and isinstance(training.epochs, int)
            and isinstance(training.batch_size, int)
            and training.epochs >= 0
            and training.batch_size >= 1
        ):
            return None  # an invalid config: the sequential path returns TorchClient's own error
        gradient = config.get("mode", "train") == "gradient"
        probe = (
            architecture_key(client.model),
            loss_key(client.loss_fn),
            (x.shape[1:], x.dtype.str, y.shape[1:], y.dtype.str),
        )
        steps = client_steps(len(x), training, gradient)
        return _Group(probe, training, gradient), _Job(position, task, client, seed, steps)

    def _probe(
        self, group: _Group, jobs: list[_Job], global_params: GlobalParams, vec: torch.Tensor
    ) -> _Probed | None:
        """The cohort model for this group, checked once per architecture; None to fall back."""
        key = (group.probe, global_params.spec)
        cached = self._probes.get(key)
        if cached is None:
            batch = group.training.batch_size
            failures = []
            for job in [j for j in jobs if j.client.num_examples][:_PROBE_CANDIDATES]:
                client = job.client
                x = torch.from_numpy(np.ascontiguousarray(client.x_train[:batch]))
                y = torch.from_numpy(np.ascontiguousarray(client.y_train[:batch]))
                try:
                    model = CohortModel.build(client.model, global_params.spec, client.loss_fn)
                    cached = _Probed(model, model.probe(vec, x, y) / len(x))
                except NotVectorizable as exc:
                    cached = str(exc)
                except Exception as exc:  # this client's own data fails eagerly too
                    failures.append(one_line(exc))
                    continue
                self._probes[key] = cached
                while len(self._probes) > _PROBE_CACHE:
                    self._probes.popitem(last=False)
                break
            else:
                if failures:  # each client gets its own error Result from the sequential path
                    self._warn(("probe", key), f"no client could be probed ({failures[0]})")
                return None  # otherwise nobody has data: zero updates, sequentially
        self._probes.move_to_end(key)
        if isinstance(cached, str):
            self._warn(("probe", key), cached)
            return None
        return cached

    def _run_group(
        self,
        probed: _Probed,
        group: _Group,
        jobs: list[_Job],
        params: Params,
        vec: torch.Tensor,
        global_params: GlobalParams,
    ) -> Iterator[Result]:
        training, gradient = group.training, group.gradient
        first = jobs[0].client
        sample_bytes = first.x_train[:1].nbytes + first.y_train[:1].nbytes
        per_client = bytes_per_client(
            probed.model,
            int(probed.activation_bytes_per_sample * training.batch_size),
            training,
            gradient,
            max(j.steps for j in jobs),
            sample_bytes,
        )
        capacity = max(1, int(self.max_memory_mb * 2**20 // per_client))
        by_steps = sorted(jobs, key=lambda j: -j.steps)  # similar step counts share a chunk
        codec = global_params.codec
        for start in range(0, len(by_steps), capacity):
            chunk = sorted(by_steps[start : start + capacity], key=lambda j: j.position)
            began = time.perf_counter()
            try:
                outcome = train_chunk(
                    probed.model,
                    vec,
                    [j.client for j in chunk],
                    [j.seed for j in chunk],
                    training,
                    gradient,
                )
            except Exception as exc:
                self._warn(("runtime", type(exc)), f"a vectorised chunk raised {one_line(exc)}")
                for job in chunk:
                    yield execute_task(job.client, job.task, params, global_params)
                continue
            seconds = (time.perf_counter() - began) / len(chunk)
            for row, job in enumerate(chunk):
                yield Result(
                    job.task,
                    num_examples=job.client.num_examples,
                    payload=codec.encode(outcome.updates[row]),
                    metrics={"train_loss": outcome.losses[row]},
                    seconds=seconds,
                )

    def _decoded(self, global_params: GlobalParams) -> tuple[Params, torch.Tensor]:
        # Every client in this process shares one decoded model; decode once per content hash.
        if self._decoded_cache is None or self._decoded_cache[0] != global_params.digest:
            vec = global_params.decode()
            self._decoded_cache = (
                global_params.digest,
                global_params.spec.unflatten(vec),
                torch.from_numpy(vec),
            )
        return self._decoded_cache[1], self._decoded_cache[2]

    def _note_too_large(self, size: int) -> None:
        """A deliberate choice, not a failure: say it once, in the log."""
        if ("too large", size) not in self._warned:
            self._warned.add(("too large", size))
            log.info(
                "vectorized engine: the model has %d parameters, over engine.max_params=%s; "
                "clients run one by one (per-client weights make a stacked cohort memory-bound "
                "on a CPU, see bench/README.md)",
                size,
                self.max_params,
            )

    def _warn(self, key: Hashable, reason: str) -> None:
        """One warning per cause per engine, not one per round."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"vectorized engine: {reason}; running these clients sequentially",
                VectorizationFallbackWarning,
                stacklevel=3,
            )


def _error(task: Task, exc: Exception) -> Result:
    """The error Result ``execute_task`` would give, for failures outside the client's methods."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {where.filename}:{where.lineno}" if where else ""
    return Result(task, error=f"{type(exc).__name__}: {exc}{at}")
