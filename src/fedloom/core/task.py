"""What the coordinator asks of a client (Task) and what comes back (Result).

A round is one or more exchanges (stages). Each task has a kind (``fit``, ``evaluate``, or a stage of
a multi-stage protocol), names the payloads it needs by content hash (``blobs``: the global model, a
cluster's model, a control variate), and says what its upload must be (``upload``: codec and number
of values), so the server can validate an upload against the size that codec declares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedloom.core.codec import Codec, get_codec
from fedloom.core.params import ParamSpec, content_hash

FIT = "fit"
EVALUATE = "evaluate"
MODEL = "model"
"""The blob role of the global model a task trains or evaluates."""
BASE = "base"
"""The blob role of the model a client already holds, when the task sends the model as a delta."""
MESSAGE = "message"
"""The upload codec of a protocol message (a key, encrypted shares, a masked input): ``size`` is
the most bytes it may take, and its bytes are read by the stage that asked for it, not decoded
into a vector."""
CONTINUES = "continues_round"
"""Task-config flag of a later stage of a multi-stage round: the client starts from the state the
round's earlier stages left (``state_round``), not from the state before the round."""
MASK = "mask"
"""The blob role of a pruning mask (a 0/1 vector over the model, ``bitmask``-encoded): blobs and
uploads that name it carry only the values where it is 1."""


@dataclass(frozen=True)
class Upload:
    """What a task's result must carry: ``size`` float values encoded with the codec ``codec``.

    With ``mask`` (the digest of the task's ``MASK`` blob), the upload is sparse under it: each
    model-sized part sends only its values where the mask is 1, and ``size`` counts those.
    """

    codec: str
    size: int
    mask: str | None = None

    def max_bytes(self) -> int:
        """The most bytes such an upload may take on the wire (the codec's declared size)."""
        if self.codec == MESSAGE:
            return self.size
        return get_codec(self.codec).wire_size(self.size)


@dataclass(frozen=True)
class Task:
    """One unit of client work in one stage of one round.

    ``blobs`` maps a role (``MODEL``, ``"control"``, ...) to the content hash of the payload the
    client needs for it; ``upload`` is None for tasks whose result is metrics only.
    """

    kind: str
    round: int
    client_id: int
    config: Mapping[str, Any] = field(default_factory=dict)
    blobs: Mapping[str, str] = field(default_factory=dict)
    upload: Upload | None = None

    @property
    def model_digest(self) -> str:
        try:
            return self.blobs[MODEL]
        except KeyError:
            raise ValueError(
                f"{self.kind} task of client {self.client_id} names no model"
            ) from None


def state_round(task: Task) -> int:
    """The round to look client state up before (``ClientStateStore.get``): the task's round, so
    that a retried round starts from the state before it, or for a later stage of a multi-stage
    round (``CONTINUES``), the round after, so it sees what the earlier stages wrote."""
    return task.round + 1 if task.config.get(CONTINUES) else task.round


@dataclass(frozen=True)
class Blob:
    """A flat float vector as it travels down (a model, a control variate): encoded once,
    addressed and cached by the SHA-256 of its payload.

    Two references make a blob smaller; both are digests of other blobs the task names, and both
    are covered by this blob's digest (``blob_digest``):

    - ``mask``: the ``MASK`` blob this one is sparse under. The payload holds only the values
      where the mask is 1; decoding puts zeros elsewhere.
    - ``base``: the ``BASE`` blob this one is a delta against (the model a client already holds, as
      a float32 blob whose digest is the hash of its values). Decoding adds the base, restricted
      to the mask when there is one.
    """

    spec: ParamSpec
    codec: Codec
    payload: bytes
    digest: str
    mask: str | None = None
    base: str | None = None

    @classmethod
    def encode(
        cls,
        spec: ParamSpec,
        codec: Codec,
        vec: np.ndarray,
        mask: Blob | None = None,
        base: Blob | None = None,
    ) -> Blob:
        """``vec`` encoded with ``codec``: under ``mask``, and as ``vec - base`` over ``base``."""
        vec = np.asarray(vec, np.float32)
        if base is not None:
            vec = vec - base.decode()
        if mask is not None:
            vec = vec[mask_support(mask.decode())]
        payload = codec.encode(vec)
        mask_digest = None if mask is None else mask.digest
        base_digest = None if base is None else base.digest
        return cls(
            spec=spec,
            codec=codec,
            payload=payload,
            digest=blob_digest(payload, mask_digest, base_digest),
            mask=mask_digest,
            base=base_digest,
        )

    @classmethod
    def mask_of(cls, spec: ParamSpec, support: np.ndarray) -> Blob:
        """The ``MASK`` blob of a boolean (or 0/1) ``support`` over the model."""
        return cls.encode(spec, get_codec("bitmask"), np.asarray(support, np.float32))

    @classmethod
    def held(cls, spec: ParamSpec, vec: np.ndarray) -> Blob:
        """``vec`` exactly, as a float32 blob: what a client holds after decoding a model, and the
        ``BASE`` of the next delta it is sent. Its digest is the hash of the values."""
        return cls.encode(spec, get_codec("float32"), vec)

    def decode(self, blobs: Blobs | None = None) -> np.ndarray:
        """The full-size vector; ``blobs`` must hold the mask and the base this blob names."""
        if self.mask is None:
            out = self.codec.decode(self.payload, self.spec.size)
            support = None
        else:
            support = mask_support(_named(self.mask, "sparse under the mask", blobs).decode())
            out = scatter(self.codec.decode(self.payload, int(support.sum())), support)
        if self.base is not None:
            base = _named(self.base, "a delta against the model", blobs).decode()
            out += base if support is None else base * support
        return out


def _named(digest: str, what: str, blobs: Blobs | None) -> Blob:
    blob = (blobs or {}).get(digest)
    if blob is None:
        raise ValueError(f"this blob is {what} {digest[:12]}, which was not provided")
    return blob


Blobs = Mapping[str, Blob]
"""Blobs by content hash: what ``Engine.run`` receives beside the tasks."""


def blob_digest(payload: bytes, mask: str | None = None, base: str | None = None) -> str:
    """The content hash of a blob: SHA-256 of the payload, and of the digests of the mask and base
    it refers to when it has them (the same bytes under another mask or base are another blob)."""
    if mask is None and base is None:
        return content_hash(payload)
    prefix = f"mask:{mask or ''}|base:{base or ''}|".encode("ascii")
    return content_hash(prefix + payload)


def mask_support(mask: np.ndarray) -> np.ndarray:
    """The boolean support of a decoded 0/1 mask."""
    return np.asarray(mask) > 0.5


def gather(vec: np.ndarray, support: np.ndarray) -> np.ndarray:
    """The values of ``vec`` (one or more model-sized parts back to back, or rows of them) where
    ``support`` is true: what a masked upload sends."""
    size = support.shape[0]
    lead = vec.shape[:-1]
    parts = vec.reshape(*lead, vec.shape[-1] // size, size)
    return np.ascontiguousarray(parts[..., support].reshape(*lead, -1))


def scatter(values: np.ndarray, support: np.ndarray) -> np.ndarray:
    """The inverse of ``gather``: model-sized parts with ``values`` where ``support`` is true and
    zeros elsewhere."""
    count = int(support.sum())
    nparts = values.shape[-1] // count if count else 1
    out = np.zeros((nparts, support.shape[0]), np.float32)
    out[:, support] = values.reshape(nparts, count)
    return out.reshape(-1)


def blob_table(*blobs: Blob) -> dict[str, Blob]:
    """``{digest: blob}`` for ``Engine.run``."""
    return {b.digest: b for b in blobs}


def resolve(task: Task, blobs: Blobs, role: str = MODEL) -> Blob:
    """The blob a task names for ``role``; ``ValueError`` if it was not sent with the task."""
    digest = task.model_digest if role == MODEL else task.blobs.get(role)
    if digest is None:
        raise ValueError(f"task {task.kind} of client {task.client_id} names no {role!r} blob")
    try:
        return blobs[digest]
    except KeyError:
        raise ValueError(f"the {role!r} blob {digest[:12]} of the task was not provided") from None


@dataclass
class Result:
    """What came back for one task.

    ``payload`` is the encoded upload (None for metrics-only tasks). ``error`` is set, and the
    rest left empty, when the client failed; the coordinator reports it and carries on. ``state``
    is the client's state after the task (in-process engines hand it back to their state store;
    it never travels over the network). ``rejected`` is set, with the reason, when whoever
    received the result (the gRPC service) refused it and already said so: the coordinator counts
    it as rejected and never uses it.
    """

    task: Task
    num_examples: int = 0
    payload: bytes | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    state: dict[str, np.ndarray] | None = None
    rejected: str | None = None

    @property
    def ok(self) -> bool:
        """The task ran and its result may be used (no error, not rejected)."""
        return self.error is None and self.rejected is None
