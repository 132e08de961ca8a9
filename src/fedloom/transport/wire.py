"""Conversions between fedloom's core types and the protocol's messages, and payload chunking."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from fedloom.core.params import ParamSpec
from fedloom.core.task import Task
from fedloom.transport.proto import fedloom_transport_pb2 as pb

PROTOCOL_VERSION = 1
COMPRESSIONS = ("gzip", "none")


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
    task: Task,
    task_id: str,
    digest: str,
    params_bytes: int,
    codec: str,
    spec: ParamSpec,
    deadline_seconds: float,
) -> pb.TaskProto:
    return pb.TaskProto(
        task_id=task_id,
        kind=task.kind,
        round=task.round,
        client_id=task.client_id,
        config_json=json.dumps(dict(task.config)),
        params_digest=digest,
        params_bytes=params_bytes,
        codec=codec,
        spec=spec_to_proto(spec),
        deadline_seconds=deadline_seconds,
    )


def task_from_proto(msg: pb.TaskProto) -> Task:
    config: Mapping[str, Any] = json.loads(msg.config_json) if msg.config_json else {}
    return Task(kind=msg.kind, round=msg.round, client_id=msg.client_id, config=config)


def chunks(payload: bytes | memoryview, chunk_bytes: int, offset: int = 0) -> Iterator[memoryview]:
    """Consecutive slices of at most ``chunk_bytes`` of ``payload``, from ``offset`` on; no copies."""
    view = memoryview(payload)
    for start in range(offset, len(view), chunk_bytes):
        yield view[start : start + chunk_bytes]
