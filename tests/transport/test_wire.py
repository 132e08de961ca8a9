"""Tasks as protocol messages: what a client reads back is the task the server sent, and a task
from a server that predates blobs reads as a task on its model. A row-sparse upload carries its
row layout down and the count of the rows it touched up."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.core.codec import Float16Codec, Float32Codec
from fedloom.core.params import ParamSpec
from fedloom.core.task import (
    EVALUATE,
    FIT,
    MODEL,
    Blob,
    Result,
    RowSparse,
    Task,
    Upload,
    encode_row_sparse,
)
from fedloom.transport.client import upload_messages
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


# 3 items: item factors (3 x 2) and item biases (3,), rows of widths (2, 1)
ITEMS = ParamSpec(names=("q", "b"), shapes=((3, 2), (3,)), dtypes=("<f4", "<f4"))
ROWS = RowSparse.of(ITEMS)


def test_a_row_sparse_upload_carries_its_row_layout_down_and_its_touched_rows_up() -> None:
    # Prepare: a fit task whose upload is sparse over the 3 item rows, and a result touching
    # rows 0 and 2
    model = Blob.encode(ITEMS, Float32Codec(), np.zeros(ITEMS.size, np.float32))
    task = Task(FIT, 2, 5, {}, {MODEL: model.digest}, Upload("float16", 9, rows=ROWS))
    update = np.array([1, 2, 0, 0, 3, 4, 5, 0, 6], np.float32)
    payload = encode_row_sparse(Float16Codec(), update, np.array([True, False, True]), ROWS)
    result = Result(task, num_examples=4, payload=payload)

    # Execute
    msg = pb.TaskProto.FromString(
        task_to_proto(task, "t1", {MODEL: model}, 30.0).SerializeToString()
    )
    header, *data = upload_messages("s1", msg, result, chunk_bytes=4)

    # Assert: the layout travels in UploadSpec.rows and reads back as sent
    assert (msg.upload.rows.rows, list(msg.upload.rows.widths)) == (3, [2, 1])
    assert task_from_proto(msg) == task
    # Assert: the header declares the rows the bitmask sets, the codec and the model's spec;
    # the payload is the 1-byte bitmask and 2 rows x 3 values in float16
    assert header.header.HasField("touched_rows") and header.header.touched_rows == 2
    assert (header.header.codec, header.header.payload_bytes) == ("float16", 1 + 2 * 3 * 2)
    assert spec_from_proto(header.header.spec) == ITEMS
    assert b"".join(d.data for d in data) == payload
    # Assert: a dense upload's header declares no touched rows
    dense = Task(FIT, 2, 5, {}, {MODEL: model.digest}, Upload("float32", 9))
    dense_msg = task_to_proto(dense, "t2", {MODEL: model}, 30.0)
    assert not dense_msg.upload.HasField("rows")
    dense_header = next(upload_messages("s1", dense_msg, Result(dense, 4, bytes(36)), 64))
    assert not dense_header.header.HasField("touched_rows")


@pytest.mark.parametrize(
    ("rows", "widths", "size", "match"),
    [
        (0, [2, 1], 0, "malformed row layout: 0 rows of widths"),
        (3, [], 0, "malformed row layout: 3 rows of widths"),
        (3, [2, -1], 3, "malformed row layout"),
        (3, [2, 1], 8, "has size 9 and no pruning mask, got size 8"),
    ],
)
def test_a_malformed_row_layout_is_refused(
    rows: int, widths: list[int], size: int, match: str
) -> None:
    upload = pb.UploadSpec(codec="float32", size=size, rows=pb.RowLayout(rows=rows, widths=widths))
    msg = pb.TaskProto(task_id="t1", kind=FIT, upload=upload)

    with pytest.raises(ValueError, match=match):
        task_from_proto(msg)
