"""Tasks as protocol messages: what a client reads back is the task the server sent, and a task
from a server that predates blobs reads as a task on its model."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.core.codec import Float16Codec, Float32Codec
from fedloom.core.params import ParamSpec
from fedloom.core.task import EVALUATE, FIT, MODEL, Blob, Task, Upload
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.wire import (
    blob_refs,
    spec_from_proto,
    spec_to_proto,
    task_from_proto,
    task_to_proto,
)

SPEC = ParamSpec(names=("w", "b"), shapes=((2, 3), (3,)), dtypes=("<f4", "<f4"))


def _blob(value: float, codec: Float32Codec | Float16Codec | None = None) -> Blob:
    return Blob.encode(SPEC, codec or Float32Codec(), np.full(SPEC.size, value, np.float32))


def test_a_task_with_two_blobs_and_an_upload_reads_back_as_sent() -> None:
    model, control = _blob(1.0), _blob(2.0, Float16Codec())
    task = Task(
        FIT,
        4,
        7,
        {"lr": 0.1, "local": {"name": "scaffold"}},
        {MODEL: model.digest, "control": control.digest},
        Upload("float32", 2 * SPEC.size),
    )

    msg = pb.TaskProto.FromString(
        task_to_proto(task, "t1", {MODEL: model, "control": control}, 30.0).SerializeToString()
    )

    assert task_from_proto(msg) == task
    refs = {ref.role: ref for ref in blob_refs(msg)}
    assert (refs["control"].digest, refs["control"].num_bytes) == (control.digest, 2 * SPEC.size)
    assert refs["control"].codec == "float16"
    assert spec_from_proto(refs[MODEL].spec) == SPEC
    # Clients from before blobs read the model from the fields they know
    assert (msg.params_digest, msg.params_bytes, msg.codec) == (model.digest, 4 * 9, "float32")


def test_a_metrics_only_task_has_no_upload() -> None:
    model = _blob(1.0)
    task = Task(EVALUATE, 1, 0, {}, {MODEL: model.digest})

    msg = task_to_proto(task, "t1", {MODEL: model}, 30.0)

    assert not msg.HasField("upload")
    assert task_from_proto(msg).upload is None


@pytest.mark.parametrize(("kind", "upload"), [(FIT, Upload("float32", 9)), (EVALUATE, None)])
def test_a_task_from_a_server_before_blobs_is_a_task_on_its_model(
    kind: str, upload: Upload | None
) -> None:
    # A server from before blobs names its model in fields 6-9 and no upload; its fits upload
    # one model-sized vector
    msg = pb.TaskProto(
        task_id="t1",
        kind=kind,
        round=2,
        client_id=3,
        params_digest="ab" * 32,
        params_bytes=36,
        codec="float32",
        spec=spec_to_proto(SPEC),
    )

    task = task_from_proto(msg)

    assert task.blobs == {MODEL: "ab" * 32}
    assert task.upload == upload
    assert [(r.role, r.num_bytes) for r in blob_refs(msg)] == [(MODEL, 36)]


def test_a_config_that_is_not_an_object_is_refused() -> None:
    msg = pb.TaskProto(task_id="t1", kind=FIT, config_json="[1, 2]")

    with pytest.raises(ValueError, match="config must be a JSON object"):
        task_from_proto(msg)
