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


@dataclass(frozen=True)
class Upload:
    """What a task's result must carry: ``size`` float values encoded with the codec ``codec``."""

    codec: str
    size: int

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
    addressed and cached by the SHA-256 of its payload."""

    spec: ParamSpec
    codec: Codec
    payload: bytes
    digest: str

    @classmethod
    def encode(cls, spec: ParamSpec, codec: Codec, vec: np.ndarray) -> Blob:
        payload = codec.encode(vec)
        return cls(spec=spec, codec=codec, payload=payload, digest=content_hash(payload))

    def decode(self) -> np.ndarray:
        return self.codec.decode(self.payload, self.spec.size)


Blobs = Mapping[str, Blob]
"""Blobs by content hash: what ``Engine.run`` receives beside the tasks."""


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
