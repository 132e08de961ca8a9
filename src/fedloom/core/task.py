"""What the coordinator asks of a client (Task) and what comes back (Result).

A round is one or more exchanges (stages). Each task has a kind (``fit``, ``evaluate``, or a stage of
a multi-stage protocol), names the payloads it needs by content hash (``blobs``: the global model, a
cluster's model, a control variate), and says what its upload must be (``upload``: codec and number
of values), so the server can validate an upload against the size that codec declares.

An upload can be sparse in two ways. Under a pruning mask (``Upload.mask``) the server chose the
support and sent it down. Over rows (``Upload.rows``) the client chooses: a model whose tensors
all have ``rows`` rows (item factors and item biases of a recommender) uploads only the rows its
update touches, as a ``bitmask`` over the rows followed by the values of those rows
(``encode_row_sparse``); the server checks that the values are exactly what the declared rows
take (``decode_row_sparse``). A task can also name the parameters its upload carries
(``UPLOAD_PARAMS`` in its config): the upload holds only their values, and nothing of the others
leaves the client (FedPer's personal layers).
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
round's earlier stages left (``client.execute.state_round``), not from the state before the
round."""
MASK = "mask"
"""The blob role of a pruning mask (a 0/1 vector over the model, ``bitmask``-encoded): blobs and
uploads that name it carry only the values where it is 1."""
UPLOAD_PARAMS = "upload_params"
"""Task-config key: the names of the parameters a fit task's upload carries (the others never
leave the client). The upload holds their values in model order, ``Upload.size`` of them; the
strategy that asked puts them back in place (``core.task.scatter`` under ``ParamSpec.support``)."""


@dataclass(frozen=True)
class RowSparse:
    """The layout of an upload sparse over rows the client chooses.

    The flat vector is ``len(widths)`` blocks one after the other; block ``j`` is a row-major
    ``rows x widths[j]`` matrix (a ``(rows, ...)`` tensor of the model), so row ``r`` is
    ``widths[j]`` values in every block. Item factors ``(I, k)`` and item biases ``(I,)`` are
    ``RowSparse(I, (k, 1))``.
    """

    rows: int
    widths: tuple[int, ...]

    @classmethod
    def of(cls, spec: ParamSpec) -> RowSparse:
        """The layout of a model whose tensors all have the same number of rows (first dim)."""
        firsts = {shape[0] if shape else None for shape in spec.shapes}
        if len(firsts) != 1 or None in firsts:
            raise ValueError(
                "a row-sparse upload needs every tensor to have the same number of rows (first "
                f"dimension); this model's shapes are {list(spec.shapes)}"
            )
        rows = int(spec.shapes[0][0])
        return cls(rows, tuple(n // rows if rows else 0 for n in spec.sizes))

    @property
    def size(self) -> int:
        """The values of the dense vector (every row)."""
        return self.rows * sum(self.widths)

    @property
    def mask_bytes(self) -> int:
        """The bytes of the ``bitmask`` over the rows that starts every upload."""
        return get_codec("bitmask").wire_size(self.rows)

    def support(self, touched: np.ndarray) -> np.ndarray:
        """The boolean support over the flat vector of the rows ``touched`` (booleans over rows)."""
        return np.concatenate([np.repeat(touched, w) for w in self.widths])


@dataclass(frozen=True)
class Upload:
    """What a task's result must carry: ``size`` float values encoded with the codec ``codec``.

    With ``mask`` (the digest of the task's ``MASK`` blob), the upload is sparse under it: each
    model-sized part sends only its values where the mask is 1, and ``size`` counts those.
    With ``rows``, the client sends only the rows its update touches (``encode_row_sparse``);
    ``size`` is the dense size, ``rows.size``.
    """

    codec: str
    size: int
    mask: str | None = None
    rows: RowSparse | None = None

    def __post_init__(self) -> None:
        if self.rows is not None and (self.mask is not None or self.rows.size != self.size):
            raise ValueError(
                f"a row-sparse upload of {self.rows} has size {self.rows.size} and no pruning "
                f"mask, got size {self.size} and mask {self.mask!r}"
            )

    def max_bytes(self) -> int:
        """The most bytes such an upload may take on the wire (the codec's declared size; for a
        row-sparse upload, the row bitmask and every row; for a protocol message, ``size``)."""
        if self.codec == MESSAGE:
            return self.size
        values = get_codec(self.codec).wire_size(self.size)
        return values if self.rows is None else self.rows.mask_bytes + values


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


def encode_row_sparse(
    codec: Codec,
    vec: np.ndarray,
    touched: np.ndarray,
    rows: RowSparse,
    rng: np.random.Generator | None = None,
) -> bytes:
    """The upload of ``vec`` (dense, ``rows.size`` values) over the rows ``touched`` (booleans
    over the rows): their ``bitmask``, then ``codec``'s encoding of the values of those rows
    only. Values of other rows are not sent, so they must be zero: ``ValueError`` otherwise."""
    touched = np.asarray(touched, dtype=bool)
    if touched.shape != (rows.rows,) or vec.shape != (rows.size,):
        raise ValueError(
            f"a row-sparse upload of {rows.rows} rows takes {rows.rows} row flags and "
            f"{rows.size} values, got {touched.shape} and {vec.shape}"
        )
    support = rows.support(touched)
    if np.any(vec[~support]):
        moved = sorted(int(r) for r in np.flatnonzero(~touched) if _row_moved(vec, rows, int(r)))
        raise ValueError(
            f"the update changes rows it does not declare as touched: {moved[:10]}"
            f"{' ...' if len(moved) > 10 else ''}"
        )
    head = get_codec("bitmask").encode(touched.astype(np.float32))
    return head + codec.encode(vec[support], rng)


def _row_moved(vec: np.ndarray, rows: RowSparse, r: int) -> bool:
    start = 0
    for w in rows.widths:
        if np.any(vec[start + r * w : start + (r + 1) * w]):
            return True
        start += rows.rows * w
    return False


def touched_rows(payload: bytes, rows: RowSparse) -> np.ndarray:
    """The row flags (booleans) a row-sparse upload declares: its leading ``bitmask``."""
    if len(payload) < rows.mask_bytes:
        raise ValueError(
            f"a row-sparse upload starts with a {rows.mask_bytes}-byte bitmask over its "
            f"{rows.rows} rows; got {len(payload)} bytes in all"
        )
    return get_codec("bitmask").decode(payload[: rows.mask_bytes], rows.rows) > 0.5


def decode_row_sparse(
    codec: Codec, payload: bytes, rows: RowSparse
) -> tuple[np.ndarray, np.ndarray]:
    """The dense vector of a row-sparse upload (zeros in the rows it does not send) and its row
    flags; ``ValueError`` when the values are not exactly what the declared rows take."""
    touched = touched_rows(payload, rows)
    support = rows.support(touched)
    count = int(support.sum())
    values = payload[rows.mask_bytes :]
    most = codec.wire_size(count)
    if len(values) > most:
        raise ValueError(
            f"it declares {int(touched.sum())} of {rows.rows} rows ({count} values, at most "
            f"{most} bytes in {codec.name}) but carries {len(values)} bytes of values"
        )
    out = np.zeros(rows.size, np.float32)
    out[support] = codec.decode(values, count)
    return out, touched


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
