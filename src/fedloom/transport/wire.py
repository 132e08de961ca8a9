"""Conversions between fedloom's core types and the protocol's messages, and payload chunking.

A task travels as a ``TaskProto``: its blobs as ``BlobRef`` messages (role, content hash, and what a
client needs to download and decode the payload), its upload as an ``UploadSpec`` (absent for a
metrics-only task). A row-sparse upload's layout (``Upload.rows``) travels as the spec's
``RowLayout``, and the upload's header declares the rows its bitmask sets (``touched_rows``).
The model's blob is repeated in the fields the message had before tasks named several blobs, and a
task from a server of that time (no ``blobs``) reads as a task on its model alone, so either side
can be upgraded first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from fedloom.core.params import ParamSpec
from fedloom.core.task import FIT, MODEL, Blob, RowSparse, Task, Upload, touched_rows
from fedloom.transport.proto import fedloom_transport_pb2 as pb

PROTOCOL_VERSION = 1
COMPRESSIONS = ("gzip", "none")
# Call metadata every client call carries: its name, and its enrolment token under token auth.
CLIENT_METADATA = "fedloom-client"
TOKEN_METADATA = "fedloom-token"


def spec_to_proto(spec: ParamSpec) -> pb.ParamSpecProto:
    return pb.ParamSpecProto(
        names=list(spec.names),
        shapes=[pb.TensorShape(dims=list(s)) for s in spec.shapes],
        dtypes=list(spec.dtypes),
    )


def spec_from_proto(msg: pb.ParamSpecProto) -> ParamSpec:
    """The ParamSpec of a message; ``ValueError`` when its three lists disagree in length."""
    if not len(msg.names) == len(msg.shapes) == len(msg.dtypes):
        raise ValueError(
            f"malformed spec: {len(msg.names)} names, {len(msg.shapes)} shapes, "
            f"{len(msg.dtypes)} dtypes"
        )
    shapes = tuple(tuple(int(d) for d in s.dims) for s in msg.shapes)
    if any(d < 0 for s in shapes for d in s):
        raise ValueError("malformed spec: negative dimension")
    return ParamSpec(names=tuple(msg.names), shapes=shapes, dtypes=tuple(msg.dtypes))


def spec_mismatch(expected: ParamSpec, got: ParamSpec) -> str | None:
    """Why ``got`` is not the model's spec, naming the first difference; None when equal."""
    if got.names != expected.names:
        missing = [n for n in expected.names if n not in got.names]
        extra = [n for n in got.names if n not in expected.names]
        if missing or extra:
            return f"parameter names do not match the model: missing {missing}, unexpected {extra}"
        return "parameter names are in a different order than the model's"
    for name, want, have in zip(expected.names, expected.shapes, got.shapes, strict=True):
        if want != have:
            return f"parameter {name!r} has shape {have}, the model expects {want}"
    return None


def task_to_proto(
    task: Task, task_id: str, blobs: Mapping[str, Blob], deadline_seconds: float
) -> pb.TaskProto:
    """The message of ``task``; ``blobs`` are the blobs it names, by role."""
    msg = pb.TaskProto(
        task_id=task_id,
        kind=task.kind,
        round=task.round,
        client_id=task.client_id,
        config_json=json.dumps(dict(task.config)),
        deadline_seconds=deadline_seconds,
        blobs=[
            pb.BlobRef(
                role=role,
                digest=blob.digest,
                num_bytes=len(blob.payload),
                codec=blob.codec.name,
                spec=spec_to_proto(blob.spec),
                mask=blob.mask or "",
                base=blob.base or "",
            )
            for role, blob in blobs.items()
        ],
    )
    model = blobs.get(MODEL)
    if model is not None:
        msg.params_digest = model.digest
        msg.params_bytes = len(model.payload)
        msg.codec = model.codec.name
        msg.spec.CopyFrom(spec_to_proto(model.spec))
    if task.upload is not None:
        msg.upload.CopyFrom(
            pb.UploadSpec(
                codec=task.upload.codec, size=task.upload.size, mask=task.upload.mask or ""
            )
        )
        rows = task.upload.rows
        if rows is not None:
            msg.upload.rows.CopyFrom(pb.RowLayout(rows=rows.rows, widths=list(rows.widths)))
    return msg


def _from_old_server(msg: pb.TaskProto) -> bool:
    """A task from a server that predates ``blobs`` and ``upload``: it names its model only."""
    return not msg.blobs and bool(msg.params_digest)


def blob_refs(msg: pb.TaskProto) -> list[pb.BlobRef]:
    """The blobs a task names, one per role."""
    if _from_old_server(msg):
        return [
            pb.BlobRef(
                role=MODEL,
                digest=msg.params_digest,
                num_bytes=msg.params_bytes,
                codec=msg.codec,
                spec=msg.spec,
            )
        ]
    return list(msg.blobs)


def upload_from_proto(msg: pb.TaskProto) -> Upload | None:
    """What the task's result must upload; None for a metrics-only task. ``ValueError`` when the
    task's spec is malformed."""
    if msg.HasField("upload"):
        rows = rows_from_proto(msg.upload.rows) if msg.upload.HasField("rows") else None
        return Upload(msg.upload.codec, int(msg.upload.size), msg.upload.mask or None, rows)
    if _from_old_server(msg) and msg.kind == FIT:
        return Upload(msg.codec, spec_from_proto(msg.spec).size)
    return None


def rows_from_proto(msg: pb.RowLayout) -> RowSparse:
    """The ``RowSparse`` layout of a message; ``ValueError`` when it has no rows, no widths, or a
    width below 1."""
    widths = tuple(int(w) for w in msg.widths)
    if msg.rows < 1 or not widths or min(widths) < 1:
        raise ValueError(
            f"malformed row layout: {msg.rows} rows of widths {list(widths)} (a row-sparse upload "
            "needs at least one row and positive widths)"
        )
    return RowSparse(int(msg.rows), widths)


def declared_rows(payload: bytes, rows: RowSparse) -> int:
    """The ``touched_rows`` an upload header declares for a row-sparse ``payload``: the rows its
    bitmask sets. ``ValueError`` when the payload does not start with a valid bitmask."""
    return int(touched_rows(payload, rows).sum())


def task_from_proto(msg: pb.TaskProto) -> Task:
    """The core Task of a message; ``ValueError`` when its config or spec is malformed."""
    config: Mapping[str, Any] = json.loads(msg.config_json) if msg.config_json else {}
    if not isinstance(config, dict):
        raise ValueError(f"the task's config must be a JSON object, got {msg.config_json[:80]!r}")
    return Task(
        kind=msg.kind,
        round=msg.round,
        client_id=msg.client_id,
        config=config,
        blobs={ref.role: ref.digest for ref in blob_refs(msg)},
        upload=upload_from_proto(msg),
    )


def chunks(payload: bytes | memoryview, chunk_bytes: int, offset: int = 0) -> Iterator[memoryview]:
    """Consecutive slices of at most ``chunk_bytes`` of ``payload``, from ``offset`` on; no copies."""
    view = memoryview(payload)
    for start in range(offset, len(view), chunk_bytes):
        yield view[start : start + chunk_bytes]
