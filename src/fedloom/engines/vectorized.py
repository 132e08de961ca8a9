"""The vectorized engine: a whole cohort of TorchClients trained in lockstep in one process.

Many small clients spend most of their time in per-call overhead: one small matrix product per
layer per minibatch, each dispatched from Python. Stacking every client's copy of the model and
running one ``torch.func.vmap(functional_call)`` step for all of them turns a hundred small products
into one batched product (DESIGN.md, "Where clients run"; issue 3). The numbers match the sequential
engine within float tolerance: same minibatch order from each client's own generator, same loss,
same optimiser recipe (see ``fedloom.engines._vmap_train``).

What runs vectorised: fit tasks of unmodified ``TorchClient``s whose model, loss and data shapes
pass a one-off probe (vmapped gradients equal eager ones on a real minibatch), with whatever local
hooks (FedProx, SCAFFOLD, FedPer's per-client starting points, Ditto's second pass) and update
transforms their task config names: the engine vmaps the same hook and transform functions
``TorchClient`` runs eagerly, and keeps each client's state in its ``ClientStateStore``.
Everything else runs exactly as the sequential engine runs it, after one
``VectorizationFallbackWarning`` per cause:

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

import json
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from fedloom.client.base import Client
from fedloom.client.execute import (
    DecodedBlobs,
    dense_upload_size,
    encode_uploads,
    error_result,
    state_round,
    transform_rng,
    upload_support,
)
from fedloom.client.local import LocalHooks, LocalTraining, client_seed, hooks_for
from fedloom.client.state import ClientStateStore
from fedloom.client.torch_client import TorchClient
from fedloom.core.codec import get_codec
from fedloom.core.params import ParamSpec
from fedloom.core.task import BASE, FIT, MESSAGE, MODEL, Blobs, Result, Task, resolve
from fedloom.engines._vmap_model import (
    CohortModel,
    NotVectorizable,
    architecture_key,
    loss_key,
    one_line,
)
from fedloom.engines._vmap_train import bytes_per_client, client_steps, train_chunk
from fedloom.engines.base import ClientFn, run_one
from fedloom.transforms import apply_to_rows, build_pipeline

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
    """Clients that can share a chunk: same model function, loss, data shapes and training, same
    hooks with the same blobs, same transforms and upload codec."""

    probe: Hashable
    training: LocalTraining
    gradient: bool
    hooks: Hashable
    blobs: tuple[tuple[str, str], ...]
    transforms: str
    codec: str


@dataclass(frozen=True)
class _Job:
    position: int
    task: Task
    client: TorchClient
    seed: int
    steps: int
    hooks: LocalHooks


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
        self.states = ClientStateStore()
        self._decoded = DecodedBlobs()
        self._memo: dict[tuple[int, int], tuple[LocalTraining, LocalHooks, Hashable, str]] = {}
        self._probes: OrderedDict[Hashable, _Probed | str] = OrderedDict()
        self._warned: set[Hashable] = set()

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        # Keyed by object ids, valid while ``tasks`` (which hold the configs) are alive.
        self._memo = {}
        groups: dict[_Group, list[_Job]] = {}
        sequential: list[tuple[Task, Client | None]] = []
        for position, task in enumerate(tasks):
            if task.kind != FIT or MODEL not in task.blobs or task.upload is None:
                sequential.append((task, None))
                continue
            try:
                model_blob = resolve(task, blobs)
            except ValueError:
                sequential.append((task, None))  # execute_task reports the missing blob
                continue
            if self.max_params is not None and model_blob.spec.size > self.max_params:
                self._note_too_large(model_blob.spec.size)
                sequential.append((task, None))
                continue
            try:
                client = self.client_fn(task.client_id)
            except Exception as exc:  # a broken client factory fails that client only
                yield error_result(task, exc)
                continue
            planned = self._plan(position, task, client)
            if planned is None:
                sequential.append((task, client))
            else:
                groups.setdefault(planned[0], []).append(planned[1])

        for group, jobs in groups.items():
            model_blob = resolve(jobs[0].task, blobs)
            vec = self._decoded.tensor(model_blob, blobs)
            probed = self._probe(group, jobs, model_blob.spec, vec)
            if probed is None:
                sequential.extend((job.task, job.client) for job in jobs)
                continue
            yield from self._run_group(probed, group, jobs, blobs, vec)

        for task, maybe_client in sequential:
            yield run_one(self.client_fn, task, blobs, self.states, self._decoded, maybe_client)

    def close(self) -> None:
        self._decoded.clear()
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
            training, hooks, hooks_key, transforms = self._settings(client.training, config)
            seed = client_seed(
                int(config.get("seed", client.seed)), int(config.get("round", 0)), client.client_id
            )
            x, y = np.asarray(client.x_train), np.asarray(client.y_train)
            assert task.upload is not None
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
        if gradient and (type(hooks) is not LocalHooks or training.dp_sgd):
            return None  # TorchClient refuses this; the sequential path reports it
        probe = (
            architecture_key(client.model),
            loss_key(client.loss_fn),
            (x.shape[1:], x.dtype.str, y.shape[1:], y.dtype.str),
        )
        steps = client_steps(len(x), training, gradient)
        group = _Group(
            probe,
            training,
            gradient,
            hooks_key,
            tuple(sorted(task.blobs.items())),  # one model (and mask, base) a group
            transforms,
            task.upload.codec,
        )
        return group, _Job(position, task, client, seed, steps, hooks)

    def _settings(
        self, base: LocalTraining, config: Mapping[str, Any]
    ) -> tuple[LocalTraining, LocalHooks, Hashable, str]:
        """A task's training, hooks (and their key) and transforms (as a key), worked out once per
        config and client training per ``run``: a round's tasks share one config."""
        key = (id(base), id(config))
        settings = self._memo.get(key)
        if settings is None:
            training = base.updated(config)
            hooks = hooks_for(config, training)
            transforms = json.dumps(list(config.get("transforms") or []), sort_keys=True)
            if transforms != "[]":
                build_pipeline(config["transforms"])  # a bad pipeline raises here
            settings = self._memo[key] = (training, hooks, hooks.key(), transforms)
        return settings

    def _probe(
        self, group: _Group, jobs: list[_Job], spec: ParamSpec, vec: torch.Tensor
    ) -> _Probed | None:
        """The cohort model for this group, checked once per architecture; None to fall back."""
        key = (group.probe, spec)
        cached = self._probes.get(key)
        if cached is None:
            batch = group.training.batch_size
            failures = []
            for job in [j for j in jobs if j.client.num_examples][:_PROBE_CANDIDATES]:
                client = job.client
                x = torch.from_numpy(np.ascontiguousarray(client.x_train[:batch]))
                y = torch.from_numpy(np.ascontiguousarray(client.y_train[:batch]))
                try:
                    model = CohortModel.build(client.model, spec, client.loss_fn)
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
        blobs: Blobs,
        vec: torch.Tensor,
    ) -> Iterator[Result]:
        training, gradient, hooks = group.training, group.gradient, jobs[0].hooks
        first = jobs[0].client
        sample_bytes = first.x_train[:1].nbytes + first.y_train[:1].nbytes
        per_client = bytes_per_client(
            probed.model,
            int(probed.activation_bytes_per_sample * training.batch_size),
            training,
            gradient,
            max(j.steps for j in jobs),
            sample_bytes,
            hooks,
        )
        extra = {
            role: self._decoded.tensor(blobs[digest], blobs)
            for role, digest in group.blobs
            if digest in blobs and role not in (MODEL, BASE)
        }
        capacity = max(1, int(self.max_memory_mb * 2**20 // per_client))
        by_steps = sorted(jobs, key=lambda j: -j.steps)  # similar step counts share a chunk
        codec = None if group.codec == MESSAGE else get_codec(group.codec)
        for start in range(0, len(by_steps), capacity):
            chunk = sorted(by_steps[start : start + capacity], key=lambda j: j.position)
            began = time.perf_counter()
            states = [self.states.get(j.task.client_id, state_round(j.task)) for j in chunk]
            starts: list[float | None] = [None] * len(chunk)
            try:
                if hooks.start_loss:  # each client's loss at the global model, as TorchClient's
                    global_params = probed.model.spec.unflatten(vec.numpy())
                    starts = [j.client.training_loss(global_params) for j in chunk]
                spec = probed.model.spec
                global_np = vec.numpy()
                personal = [hooks.personalize(spec, global_np, st) for st in states]
                outcome = train_chunk(
                    probed.model,
                    vec,
                    [j.client for j in chunk],
                    [j.seed for j in chunk],
                    training,
                    gradient,
                    hooks,
                    extra,
                    states,
                    personal if hooks.start_personal else None,
                )
                personal_losses = self._personal_pass(
                    probed, vec, chunk, training, hooks, extra, personal, outcome.states
                )
                tasks = [j.task for j in chunk]
                specs = tasks[0].config.get("transforms") or []  # one pipeline a group
                ctx = {"round": tasks[0].round}
                rngs = [transform_rng(t) for t in tasks]
                uploads = apply_to_rows(specs, outcome.updates, outcome.states, ctx, rngs)
                support = upload_support(tasks[0], blobs, self._decoded)  # one mask a group
                _check_sizes(uploads, chunk, probed.model.spec.size, support)
                metrics = [
                    {
                        "train_loss": outcome.losses[row],
                        **job.hooks.metrics(job.steps, starts[row]),
                        **(
                            {}
                            if personal_losses is None
                            else {"personal_train_loss": personal_losses[row]}
                        ),
                    }
                    for row, job in enumerate(chunk)
                ]
                payloads = encode_uploads(
                    codec,
                    uploads,
                    tasks,
                    outcome.states,
                    support,
                    [j.client.num_examples for j in chunk],
                    metrics,
                )
            except Exception as exc:
                self._warn(("runtime", type(exc)), f"a vectorised chunk raised {one_line(exc)}")
                for job in chunk:
                    yield run_one(
                        self.client_fn, job.task, blobs, self.states, self._decoded, job.client
                    )
                continue
            seconds = (time.perf_counter() - began) / len(chunk)
            for row, job in enumerate(chunk):
                self.states.put(job.task.client_id, job.task.round, outcome.states[row])
                yield Result(
                    job.task,
                    num_examples=job.client.num_examples,
                    payload=payloads[row],
                    metrics=metrics[row],
                    seconds=seconds,
                )

    @staticmethod
    def _personal_pass(
        probed: _Probed,
        vec: torch.Tensor,
        chunk: Sequence[_Job],
        training: LocalTraining,
        hooks: LocalHooks,
        extra: Mapping[str, torch.Tensor],
        personal: Sequence[np.ndarray | None],
        states: Sequence[dict[str, np.ndarray]],
    ) -> list[float] | None:
        """The hooks' second pass (Ditto's personal models) for the chunk, as ``TorchClient.fit``
        runs it: from each client's personal model (or the global one), on the same minibatches;
        the trained models go into ``states``. Returns the pass's losses (None: no pass)."""
        second = hooks.personal_pass()
        if second is None:
            return None
        outcome = train_chunk(
            probed.model,
            vec,
            [j.client for j in chunk],
            [j.seed for j in chunk],
            training,
            False,
            second,
            extra,
            None,
            personal,
        )
        spec, global_np = probed.model.spec, vec.numpy()
        for row, state in enumerate(states):
            trained = global_np + outcome.updates[row, : spec.size]
            state.update(hooks.keep_personal(spec, trained.astype(np.float32)))
        return outcome.losses

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


def _check_sizes(
    rows: np.ndarray, chunk: Sequence[_Job], model_size: int, support: np.ndarray | None
) -> None:
    for job in chunk:
        expected = dense_upload_size(job.task, model_size, support)
        if expected is not None and rows.shape[1] != expected:
            raise ValueError(f"the upload has {rows.shape[1]} values, the task expects {expected}")
