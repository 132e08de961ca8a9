"""Row-sparse uploads (``Upload.rows``) over a real gRPC server on 127.0.0.1: the client uploads the
bitmask of the rows it touched and their values, and the server refuses a header that lies about
them, with the reason, and goes on serving."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from fedloom.client.base import ClientContext, EvalResult, FitResult
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import (
    FIT,
    MODEL,
    Blob,
    Result,
    RowSparse,
    Task,
    Upload,
    blob_table,
    encode_row_sparse,
)
from fedloom.engines.base import Transfer
from fedloom.engines.remote import RemoteEngine
from fedloom.transport.client import Connection
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from tests.transport.conftest import (
    Running,
    next_task,
    raw_client,
    start_client,
    wait_ready,
)

pytestmark = pytest.mark.deploy

# item factors (5 x 3) and item biases (5,): row r is 3 + 1 values; the bitmask is 1 byte
SPEC = ParamSpec(names=("q", "b"), shapes=((5, 3), (5,)), dtypes=("<f4", "<f4"))
ROWS = RowSparse.of(SPEC)
MODEL_BLOB = Blob.encode(SPEC, Float32Codec(), np.zeros(SPEC.size, np.float32))
TOUCHED = np.array([False, True, False, True, False])
UPDATE = np.zeros(SPEC.size, np.float32)
UPDATE[3:6], UPDATE[9:12] = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]  # q rows 1 and 3
UPDATE[16], UPDATE[18] = 7.0, 8.0  # b rows 1 and 3
# the honest upload: bitmask 0b01010, then 2 rows x 4 values x 4 bytes
PAYLOAD = encode_row_sparse(Float32Codec(), UPDATE, TOUCHED, ROWS)


class RowsClient:
    """Moves rows 1 and 3 of the item model, and says so (``FitResult.rows``)."""

    num_examples = 2

    def fit(self, params: Params, config: Mapping[str, Any], context: ClientContext) -> FitResult:
        return FitResult(update=UPDATE.copy(), num_examples=2, rows=np.flatnonzero(TOUCHED))

    def evaluate(
        self, params: Params, config: Mapping[str, Any], context: ClientContext
    ) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=1)


def _fit(round_num: int) -> Task:
    upload = Upload("float32", ROWS.size, rows=ROWS)
    return Task(FIT, round_num, 0, {}, {MODEL: MODEL_BLOB.digest}, upload)


def test_a_row_sparse_fit_travels_as_the_bitmask_and_the_touched_rows(
    plain_server: Running,
) -> None:
    # Prepare: a deployment client whose update touches rows 1 and 3 of 5
    started = start_client(plain_server, None, "client-0", lambda cid: RowsClient())
    wait_ready(plain_server, 1)
    engine = RemoteEngine(plain_server.hub, deadline_s=30)

    # Execute
    (result,) = engine.run([_fit(1)], blob_table(MODEL_BLOB))
    plain_server.hub.finish()

    # Assert: accepted, and exactly the upload the in-process engines make: 1 + 32 bytes up
    assert started.join() == 0
    assert result.ok, result.error or result.rejected
    assert result.payload == PAYLOAD and len(PAYLOAD) == 1 + 2 * 4 * 4
    assert engine.last_transfer() == Transfer(len(MODEL_BLOB.payload), 33)


def _upload(
    conn: Connection, task: pb.TaskProto, payload: bytes, touched_rows: int | None
) -> pb.UploadReply:
    header = pb.UploadHeader(
        session_id=conn.session_id,
        task_id=task.task_id,
        num_examples=2,
        payload_bytes=len(payload),
        codec="float32",
    )
    if touched_rows is not None:
        header.touched_rows = touched_rows
    reply: pb.UploadReply = conn.stub.UploadResult(
        iter([pb.UploadChunk(header=header), pb.UploadChunk(data=payload)])
    )
    return reply


def _round(
    running: Running, conn: Connection, round_num: int, payload: bytes, touched: int | None
) -> tuple[pb.UploadReply, list[Result], int]:
    """One fit task answered by the raw client; the reply, the engine's results, and the bytes
    the server read of the upload."""
    engine = RemoteEngine(running.hub, deadline_s=30)
    results: list[Result] = []
    thread = threading.Thread(
        target=lambda: results.extend(engine.run([_fit(round_num)], blob_table(MODEL_BLOB)))
    )
    thread.start()
    task = next_task(conn)
    assert (task.upload.rows.rows, list(task.upload.rows.widths)) == (5, [3, 1])
    up0 = running.hub.traffic()[1]
    reply = _upload(conn, task, payload, touched)
    thread.join(30)
    return reply, results, running.hub.traffic()[1] - up0


NAN = bytearray(PAYLOAD)
NAN[1:5] = np.float32("nan").tobytes()
THREE_ROWS = bytes([0b1011]) + PAYLOAD[1:] + bytes(16)  # bitmask of rows 0, 1, 3; 3 rows of values


@pytest.mark.parametrize(
    ("payload", "touched", "reason", "read"),
    [
        # a client that predates touched_rows
        (PAYLOAD, None, "the header declares no touched_rows; upgrade the fedloom client", 0),
        (PAYLOAD, 6, "the header declares 6 touched rows, the model has 5", 0),
        # the length of 2 rows, declared as 1: refused before a byte is read
        (
            PAYLOAD,
            1,
            "a row-sparse update of 1 touched rows is the 1-byte bitmask and at most 16 bytes of "
            "values (4 values of float32), at most 17 bytes; it is declared as 33",
            0,
        ),
        # 3 rows declared and 3 rows of values, but the bitmask sets 2
        (
            PAYLOAD + bytes(16),
            3,
            "the header declares 3 touched rows, the update's bitmask sets 2",
            49,
        ),
        # the bitmask has 3 bits set, the third past the last row
        (
            bytes([0b101010]) + PAYLOAD[1:] + bytes(16),
            3,
            "row-sparse update does not match the task: bitmask payload: padding bits after the "
            "last value are not zero",
            49,
        ),
        # the bitmask and the header say 3 rows, the values are those of 2: within the cap, so
        # read, and refused by the decoding the coordinator applies (decode_row_sparse)
        (
            THREE_ROWS[:33],
            3,
            "row-sparse update does not match the task: payload has 32 bytes, expected 48 "
            "(float32 x 12)",
            33,
        ),
        # everything consistent, and a NaN: the check of the in-process path (check_upload)
        (bytes(NAN), 2, "update has 1 non-finite values (NaN or inf)", 33),
    ],
    ids=[
        "no-count",
        "more-rows-than-the-model",
        "short-count",
        "bitmask-sets-fewer",
        "padding",
        "values-of-fewer-rows",
        "nan",
    ],
)
def test_a_lying_row_sparse_upload_is_refused_and_the_server_goes_on(
    plain_server: Running, payload: bytes, touched: int | None, reason: str, read: int
) -> None:
    # Prepare: a hand-driven client
    conn = raw_client(plain_server)
    try:
        # Execute: a lying upload, then an honest one
        reply, results, received = _round(plain_server, conn, 1, payload, touched)
        honest, after, _ = _round(plain_server, conn, 2, PAYLOAD, 2)
    finally:
        conn.close()

    # Assert: refused with the reason, read no further than needed, delivered as rejected
    assert not reply.accepted
    assert reason in reply.reason
    assert received == read
    assert [(r.rejected is not None, r.payload) for r in results] == [(True, None)]
    # Assert: the server still serves, and accepts the honest upload
    assert honest.accepted, honest.reason
    assert [(r.ok, r.payload) for r in after] == [(True, PAYLOAD)]
