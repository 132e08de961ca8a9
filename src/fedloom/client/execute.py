"""The client-side half of one exchange, shared by every engine that runs clients in Python and by
the deployment client: resolve the task's blobs, run the client, pass the update through the
task's transforms, encode it with the task's upload codec.

Task kinds are handled by stage handlers: ``fit`` and ``evaluate`` are built in, and multi-stage
protocols register their client stages with ``register_stage`` (a deployment client advertises the
kinds it has handlers for when it joins).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedloom.client.base import Client, ClientContext
from fedloom.client.state import State
from fedloom.core.codec import Codec, get_codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import (
    CONTINUES,
    EVALUATE,
    FIT,
    MASK,
    MESSAGE,
    MODEL,
    UPLOAD_PARAMS,
    Blob,
    Blobs,
    Result,
    Task,
    encode_row_sparse,
    gather,
    mask_support,
    resolve,
    scatter,
)
from fedloom.secagg import ADVERTISE, SHARE, UNMASK
from fedloom.secagg import CONFIG_KEY as SECAGG_CONFIG
from fedloom.transforms import apply_to_rows


@dataclass
class StageOutput:
    """What a stage handler returns: the upload vector (None for metrics only), the example count
    and metrics, or for a stage whose upload is a protocol ``message``, its bytes. The handler
    updates ``context.state`` in place."""

    upload: np.ndarray | None
    num_examples: int
    metrics: dict[str, float]
    message: bytes | None = None
    rows: np.ndarray | None = None
    """The rows a row-sparse upload touches (``FitResult.rows``)."""


StageHandler = Callable[[Client, Task, Params, ClientContext], StageOutput]
STAGES: dict[str, StageHandler] = {}


# Stages of built-in algorithms live beside their server half (one file per algorithm) and are
# imported when a task first names them, as the local-training hooks are (``client.local``).
_BUILTIN_STAGES = {
    "ifca_select": "fedloom.strategies.ifca",
    "ifca_evaluate": "fedloom.strategies.ifca",
    ADVERTISE: "fedloom.client.secagg",
    SHARE: "fedloom.client.secagg",
    UNMASK: "fedloom.client.secagg",
}


EVALUATION_KINDS = {EVALUATE, "ifca_evaluate"}
"""Task kinds that evaluate a round's outcome, after its training (see ``state_round``)."""


def register_stage(kind: str, handler: StageHandler, *, evaluation: bool = False) -> None:
    """Let clients run tasks of ``kind`` (a stage of a multi-stage protocol); ``evaluation``:
    the kind evaluates the round's outcome, after its training (``state_round``)."""
    STAGES[kind] = handler
    if evaluation:
        EVALUATION_KINDS.add(kind)


def state_round(task: Task) -> int:
    """The ``round_num`` to read a task's client state with (``ClientStateStore.get``): a task of
    round ``r`` starts from the state rounds before ``r`` left (a retried round starts where its
    first attempt did), except an evaluation, which runs after round ``r``'s training and sees
    the state it left (a personalised model trained in round ``r``), and a later stage of a
    multi-stage round (``CONTINUES``: secure aggregation's), which sees what the round's earlier
    stages wrote."""
    after = task.kind in EVALUATION_KINDS or bool(task.config.get(CONTINUES))
    return task.round + 1 if after else task.round


def stage_handler(kind: str) -> StageHandler | None:
    """The handler of task kind ``kind`` (importing a built-in algorithm's), or None."""
    if kind not in STAGES and kind in _BUILTIN_STAGES:
        importlib.import_module(_BUILTIN_STAGES[kind])
    return STAGES.get(kind)


def stage_kinds() -> list[str]:
    """Every task kind this process can run: the registered ones and the built-in ones."""
    return sorted({*STAGES, *_BUILTIN_STAGES})


MessageEncoder = Callable[[np.ndarray, int, Mapping[str, float], State, Task], bytes]
MESSAGE_ENCODERS: dict[str, MessageEncoder] = {}


def register_message_encoder(config_key: str, encoder: MessageEncoder) -> None:
    """Let a protocol turn a client's update into its ``message`` upload: a task whose upload is a
    ``MESSAGE`` and whose config has ``config_key`` is encoded by ``encoder(update, num_examples,
    metrics, state, task)`` (after the task's transforms) instead of by a codec. Secure aggregation masks
    updates this way, so every engine trains as for any fit task and only the last step differs."""
    MESSAGE_ENCODERS[config_key] = encoder


# Encoders of built-in protocols, imported when a task's config first names them (as stages are).
_BUILTIN_ENCODERS = {SECAGG_CONFIG: "fedloom.client.secagg"}


def _message_encoder(task: Task) -> MessageEncoder:
    for key, module in _BUILTIN_ENCODERS.items():
        if key in task.config and key not in MESSAGE_ENCODERS:
            importlib.import_module(module)
    for key, encoder in MESSAGE_ENCODERS.items():
        if key in task.config:
            return encoder
    raise ValueError(
        f"the {task.kind} task asks for a message upload but its config names no protocol "
        f"that makes one (known: {sorted({*MESSAGE_ENCODERS, *_BUILTIN_ENCODERS})})"
    )


@functools.cache
def _takes_context(func: Callable[..., object], bound: bool) -> bool:
    """Whether ``func`` (a method's function when ``bound``) takes a third argument."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    if bound:
        params = params[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (
        any(p.name == "context" for p in params)
        or len(positional) >= 3
        or any(p.kind == p.VAR_POSITIONAL for p in params)
    )


def call_with_context(
    method: Callable[..., object], params: Params, task: Task, context: ClientContext
) -> object:
    """``method(params, config, context)``, or ``method(params, config)`` for clients written
    without a context when the task needs none."""
    func = getattr(method, "__func__", method)
    if _takes_context(func, func is not method):
        return method(params, task.config, context)
    # A pruning mask is also how the model travels; a client without a context simply trains the
    # dense model it decodes to, and the server re-applies the mask.
    if set(context.blobs) - {MASK} or context.state:
        raise TypeError(
            f"this {task.kind} task sends {sorted(context.blobs) or 'client state'}, but "
            f"{type(getattr(method, '__self__', method)).__name__}.{func.__name__} takes no "
            "context argument; add `context: ClientContext` to it or use TorchClient"
        )
    return method(params, task.config)


def dense_upload_size(task: Task, model_size: int, mask: np.ndarray | None) -> int | None:
    """How many values a client's update has before it is encoded: the task's upload size, or for
    an upload sparse under a pruning mask or over named parameters (``UPLOAD_PARAMS``), that many
    model-sized parts (None: no upload). ``mask``: the upload's support (``upload_support``), or
    the task's ``MASK`` blob."""
    upload = task.upload
    if upload is None or upload.codec == MESSAGE:
        return None  # a message's encoder checks the update it is given
    if upload.mask is None and UPLOAD_PARAMS not in task.config:
        return upload.size
    kept = 0 if mask is None else int(mask_support(mask).sum())
    if kept == 0 or upload.size % kept:
        raise ValueError(
            f"the task's upload of {upload.size} values does not fit its mask of {kept} weights"
        )
    return upload.size // kept * model_size


def named_support(task: Task, spec: ParamSpec) -> np.ndarray | None:
    """The support (booleans over the model) of the parameters a task's upload carries
    (``UPLOAD_PARAMS``), or None when the task names none."""
    names = task.config.get(UPLOAD_PARAMS)
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"the task's {UPLOAD_PARAMS} must be parameter names, got {names!r}")
    if task.upload is not None and task.upload.mask is not None:
        raise ValueError(
            f"the task's upload is sparse under a pruning mask and names {UPLOAD_PARAMS}; "
            "an upload takes one or the other"
        )
    return spec.support(names)


def _fit(client: Client, task: Task, params: Params, context: ClientContext) -> StageOutput:
    fit = call_with_context(client.fit, params, task, context)
    spec = ParamSpec.of(params)
    named = named_support(task, spec)
    size = dense_upload_size(task, spec.size, context.blobs.get(MASK) if named is None else named)
    update = fit.update  # type: ignore[attr-defined]
    if isinstance(update, np.ndarray):
        if update.ndim != 1 or (size is not None and update.shape[0] != size):
            raise ValueError(f"the update has shape {update.shape}, the task expects {size} values")
        vec = update.astype(np.float32, copy=False)
    else:
        vec = spec.flatten(update)
        if size is not None and vec.shape[0] != size:
            raise ValueError(f"the update has {vec.shape[0]} values, the task expects {size}")
    rows = getattr(fit, "rows", None)
    return StageOutput(vec, int(fit.num_examples), dict(fit.metrics), rows=rows)  # type: ignore[attr-defined]


def _evaluate(client: Client, task: Task, params: Params, context: ClientContext) -> StageOutput:
    ev = call_with_context(client.evaluate, params, task, context)
    metrics = {"loss": float(ev.loss), **ev.metrics}  # type: ignore[attr-defined]
    return StageOutput(None, int(ev.num_examples), metrics)  # type: ignore[attr-defined]


register_stage(FIT, _fit)
register_stage(EVALUATE, _evaluate)

ERROR_FEEDBACK = "error_feedback/residual"
"""Client-state key of the error-feedback residual."""


def codec_rng(task: Task) -> np.random.Generator:
    """The stream a stochastic codec (QSGD, random-k) draws from for one task: seeded by (seed,
    round, client) and apart from local training's, so a client's upload does not depend on the
    engine or on which clients run beside it."""
    seed = int(task.config.get("seed", 0))
    return np.random.default_rng([seed, task.round, task.client_id, 0x636F646563])


def transform_rng(task: Task, secret: int | None = None) -> np.random.Generator:
    """The stream a noising transform (local DP) draws from for one task: seeded by (seed,
    round, client) and apart from local training's and the codec's, so a client's noise does not
    depend on the engine or on which clients run beside it.

    ``secret`` (a deployment client's own random bits) is mixed in when given: the server chose
    the seed, and noise it can recompute would protect nothing against it."""
    seed = int(task.config.get("seed", 0))
    entropy = [seed, task.round, task.client_id, 0x6E6F697365]
    return np.random.default_rng(entropy if secret is None else [*entropy, secret])


def encode_uploads(
    codec: Codec | None,
    rows: np.ndarray,
    tasks: Sequence[Task],
    states: Sequence[State],
    support: np.ndarray | None = None,
    num_examples: Sequence[int] | None = None,
    metrics: Sequence[Mapping[str, float]] | None = None,
) -> list[bytes]:
    """Encode one upload per row (one client each), with error feedback where the task asks.

    Tasks whose upload is a protocol ``MESSAGE`` (``codec`` None) are encoded, their values under
    ``support`` only, by the protocol's encoder (``register_message_encoder``), which may also need each row's ``num_examples``.

    With ``support`` (``upload_support``: the tasks' pruning mask or named parameters, as booleans
    over the model), each row sends only its values under it (``gather``); the residual stays
    model-sized and zero off the support.

    Error feedback (Stich et al. 2018, "Sparsified SGD with Memory"; Karimireddy et al. 2019,
    "Error Feedback Fixes SignSGD and other Gradient Compression Schemes"): the client adds the
    residual of what its last lossy upload left out, and keeps as the new residual what this one
    leaves out: ``target = update + residual``, ``residual = target - decode(encode(target))``.
    It needs the codec's own reconstruction, so it is this encoding step and not a transform
    before it. The residual is client state, so it lives in the engine's store in simulation and in
    the client process in a deployment. One batched ``encode_rows`` serves one client or a cohort.
    """
    if codec is None:
        counts = num_examples or [0] * len(tasks)
        reported = metrics or [{}] * len(tasks)
        out = []
        for row, task, state, count, mets in zip(
            rows, tasks, states, counts, reported, strict=True
        ):
            values = row if support is None else gather(row[None, :], support)[0]
            message = _message_encoder(task)(values, count, mets, state, task)
            if task.upload is not None and len(message) > task.upload.size:
                raise ValueError(f"the message is {len(message)} bytes, over {task.upload.size}")
            out.append(message)
        return out
    feedback = [bool(t.config.get("error_feedback")) for t in tasks]
    targets = np.array(rows, dtype=np.float32, copy=True)
    for i, (on, state) in enumerate(zip(feedback, states, strict=True)):
        residual = state.get(ERROR_FEEDBACK)
        if on and residual is not None and residual.shape == targets[i].shape:
            targets[i] += residual
    rngs = [codec_rng(t) for t in tasks] if codec.stochastic else None
    values = targets if support is None else gather(targets, support)
    payloads = codec.encode_rows(values, rngs)
    for i, (on, state) in enumerate(zip(feedback, states, strict=True)):
        if on:
            sent = codec.decode(payloads[i], values.shape[1])
            if support is not None:
                sent = scatter(sent, support)
                targets[i] *= np.tile(support, targets.shape[1] // support.shape[0])
            state[ERROR_FEEDBACK] = (targets[i] - sent).astype(np.float32)
    return payloads


def upload_support(task: Task, blobs: Blobs, decoded: DecodedBlobs) -> np.ndarray | None:
    """The boolean mask an upload is sparse under: the task's pruning mask, or the parameters it
    names (``UPLOAD_PARAMS``); None for a dense upload."""
    if task.upload is None:
        return None
    if UPLOAD_PARAMS in task.config:
        return named_support(task, resolve(task, blobs).spec)
    if task.upload.mask is None:
        return None
    if task.blobs.get(MASK) != task.upload.mask:
        raise ValueError("the upload is sparse under a mask that the task does not send")
    return mask_support(decoded.vector(resolve(task, blobs, MASK), blobs))


class DecodedBlobs:
    """Decoded blob vectors by content hash, decoded once per hash.

    ``vector`` hands out read-only views, so a client cannot edit what the next client receives;
    ``tensor`` shares the same memory as a torch tensor for engines that only read it.
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._vectors: dict[str, np.ndarray] = {}

    def _decoded(self, blob: Blob, blobs: Blobs | None) -> np.ndarray:
        vec = self._vectors.get(blob.digest)
        if vec is None:
            vec = self._vectors[blob.digest] = blob.decode(blobs)
            while len(self._vectors) > self.keep:
                self._vectors.pop(next(iter(self._vectors)))
        return vec

    def vector(self, blob: Blob, blobs: Blobs | None = None) -> np.ndarray:
        """``blob`` decoded; ``blobs`` holds the mask a sparse blob is under."""
        view: np.ndarray = self._decoded(blob, blobs).view()
        view.setflags(write=False)
        return view

    def tensor(self, blob: Blob, blobs: Blobs | None = None) -> torch.Tensor:
        return torch.from_numpy(self._decoded(blob, blobs))

    def clear(self) -> None:
        self._vectors.clear()


def execute_task(
    client: Client,
    task: Task,
    blobs: Blobs,
    state: State | None = None,
    decoded: DecodedBlobs | None = None,
    noise_secret: int | None = None,
) -> Result:
    """Run one task on one client. A client that raises yields an error Result, never a crash.

    ``state`` is the client's state before the task; the Result carries it after the task. The
    client gets its own writable copy of the params, so nothing it does to them reaches another.
    ``noise_secret``: see ``transform_rng``.
    """
    start = time.perf_counter()
    decoded = decoded or DecodedBlobs()
    try:
        handler = stage_handler(task.kind)
        if handler is None:
            raise ValueError(f"this client does not handle task kind {task.kind!r}")
        # a protocol stage (secure aggregation's key exchange) may need no model
        params: Params = {}
        if MODEL in task.blobs:
            model = resolve(task, blobs)
            params = model.spec.unflatten(decoded.vector(model, blobs).copy())
        context = ClientContext(
            blobs={
                role: decoded.vector(resolve(task, blobs, role), blobs)
                for role in task.blobs
                if role != MODEL
            },
            state={k: v.copy() for k, v in (state or {}).items()},
        )
        out = handler(client, task, params, context)
        payload = None
        if task.upload is not None and out.message is not None:
            if task.upload.codec != MESSAGE or len(out.message) > task.upload.size:
                raise ValueError(
                    f"the {task.kind} stage made a {len(out.message)}-byte message; the task "
                    f"takes {task.upload.codec} of at most {task.upload.size}"
                )
            payload = out.message
        elif task.upload is not None:
            if out.upload is None:
                raise ValueError(f"the {task.kind} task expects an upload and none was made")
            specs = task.config.get("transforms") or []
            vec = apply_to_rows(
                specs,
                out.upload[None, :],
                [context.state],
                {"round": task.round},
                [transform_rng(task, noise_secret)],
            )
            codec = None if task.upload.codec == MESSAGE else get_codec(task.upload.codec)
            if task.upload.rows is not None and codec is not None:
                payload = _row_sparse_upload(codec, vec[0], out.rows, task)
            else:
                support = upload_support(task, blobs, decoded)
                payload = encode_uploads(
                    codec, vec, [task], [context.state], support, [out.num_examples], [out.metrics]
                )[0]
        return Result(
            task,
            num_examples=out.num_examples,
            payload=payload,
            metrics=out.metrics,
            seconds=time.perf_counter() - start,
            # Only a task that changed the state hands it back: an evaluation after a fit in the
            # same round must not put the state from before the round back in the store.
            state=context.state if _changed(state or {}, context.state) else None,
        )
    except Exception as exc:  # one client's failure must not stop the round
        return error_result(task, exc, time.perf_counter() - start)


def _row_sparse_upload(codec: Codec, vec: np.ndarray, rows: np.ndarray | None, task: Task) -> bytes:
    """The upload of a task that asks for one sparse over the rows the client touched."""
    layout = task.upload.rows if task.upload is not None else None
    assert layout is not None
    if rows is None:
        raise ValueError(
            "this task asks for an upload of the touched rows only; the client's FitResult "
            "must name them (FitResult.rows)"
        )
    if task.config.get("error_feedback"):
        raise ValueError("a row-sparse upload keeps no error-feedback residual")
    flags = np.asarray(rows)
    if flags.dtype != np.bool_:
        flags = np.zeros(layout.rows, dtype=bool)
        flags[np.asarray(rows, dtype=np.int64)] = True
    return encode_row_sparse(
        codec, vec, flags, layout, codec_rng(task) if codec.stochastic else None
    )


def _changed(before: State, after: State) -> bool:
    return before.keys() != after.keys() or any(
        not np.array_equal(before[k], after[k]) for k in before
    )


def error_result(task: Task, exc: BaseException, seconds: float = 0.0) -> Result:
    """The error Result of a task whose client (or its factory) raised: type, message, place."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {where.filename}:{where.lineno}" if where else ""
    return Result(task, error=f"{type(exc).__name__}: {exc}{at}", seconds=seconds)
