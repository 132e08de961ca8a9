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


@dataclass(frozen=True)
class Blob:
    """A flat float vector as it travels down (a model, a control variate): encoded once,
    addressed and cached by the SHA-256 of its payload.

    ``mask`` names (by digest) the ``MASK`` blob this one is sparse under: the payload holds only
    the values where the mask is 1, and decoding puts zeros elsewhere. The digest covers the mask's
    digest too, so the same values under two masks are two blobs.
    """

    spec: ParamSpec
    codec: Codec
    payload: bytes
    digest: str
    mask: str | None = None

    @classmethod
    def encode(
        cls, spec: ParamSpec, codec: Codec, vec: np.ndarray, mask: Blob | None = None
    ) -> Blob:
        if mask is None:
            payload = codec.encode(vec)
            return cls(spec=spec, codec=codec, payload=payload, digest=content_hash(payload))
        payload = codec.encode(np.asarray(vec, np.float32)[mask_support(mask.decode())])
        digest = masked_digest(payload, mask.digest)
        return cls(spec=spec, codec=codec, payload=payload, digest=digest, mask=mask.digest)

    @classmethod
    def mask_of(cls, spec: ParamSpec, support: np.ndarray) -> Blob:
        """The ``MASK`` blob of a boolean (or 0/1) ``support`` over the model."""
        return cls.encode(spec, get_codec("bitmask"), np.asarray(support, np.float32))

    def decode(self, blobs: Blobs | None = None) -> np.ndarray:
        """The full-size vector; a blob sparse under a mask needs that mask among ``blobs``."""
        if self.mask is None:
            return self.codec.decode(self.payload, self.spec.size)
        mask = (blobs or {}).get(self.mask)
        if mask is None:
            raise ValueError(
                f"this blob is sparse under the mask {self.mask[:12]}, which was not provided"
            )
        support = mask_support(mask.decode())
        return scatter(self.codec.decode(self.payload, int(support.sum())), support)


Blobs = Mapping[str, Blob]
"""Blobs by content hash: what ``Engine.run`` receives beside the tasks."""


def masked_digest(payload: bytes, mask_digest: str) -> str:
    """The content hash of a payload sparse under the mask ``mask_digest``."""
    return content_hash(mask_digest.encode("ascii") + b"|" + payload)


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
    it never travels over the network).
    """

    task: Task
    num_examples: int = 0
    payload: bytes | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    state: dict[str, np.ndarray] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
