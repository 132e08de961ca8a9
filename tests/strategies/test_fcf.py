"""FederatedCF: each item row is averaged over the clients that touched it, and an upload that
is not what its declared rows take is rejected with the reason."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import pytest

from fedloom.client.fcf import FCFClient, UserRatings
from fedloom.core.params import ParamSpec
from fedloom.core.task import Blobs, Result, RowSparse, Task
from fedloom.engines import SequentialEngine
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies.fcf import FederatedCF, RowMean


def test_row_mean_by_hand() -> None:
    rows = RowSparse(3, (2, 1))  # a (3, 2) and a (3,) tensor
    agg = RowMean(rows)
    # client A touched rows 0 and 1, client B rows 1 (with a zero change) and nothing else
    agg.add(np.array([1, 1, 2, 2, 0, 0, 3, 4, 0], np.float32), np.array([True, True, False]))
    agg.add(np.array([0, 0, 0, 0, 0, 0, 0, 0, 0], np.float32), np.array([False, True, False]))

    # row 0: A alone; row 1: (A + B) / 2 (B counts although its change is zero); row 2: nobody
    assert agg.finish().tolist() == [1, 1, 1, 1, 0, 0, 3, 2, 0]
    assert agg.count == 2


SPEC = ParamSpec(("item_factors", "item_bias"), ((4, 1), (4,)), ("float32", "float32"))


def _clients(cid: int) -> FCFClient:
    user = UserRatings(cid, np.array([cid]), np.array([5.0], np.float32), np.array([], np.int64),
                       np.array([], np.float32))  # fmt: skip
    return FCFClient([user])


class _Padding:
    """An engine whose client 1 appends 4 bytes to its upload: more than its rows take."""

    name = "padding"

    def __init__(self) -> None:
        self.inner = SequentialEngine(_clients)

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        for result in self.inner.run(tasks, blobs):
            if result.task.client_id == 1 and result.payload is not None:
                result = replace(result, payload=result.payload + b"\0\0\0\0")
            yield result

    def close(self) -> None:
        self.inner.close()


def test_an_oversized_upload_is_rejected_with_the_reason_and_its_rows_do_not_move(
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32)  # item biases 1: every user errs
    coordinator = Coordinator(
        strategy=FederatedCF(client_config={"lr": 0.1, "reg": 0.0}),
        engine=_Padding(),
        spec=SPEC,
        params=start,
        population=Population({0: 1, 1: 1, 2: 1}),
    )

    record = coordinator.run_round(1)

    assert (record["returned"], record["rejected"]) == (2, 1)
    assert (
        "update of client 1 rejected: row-sparse update does not match the task: it declares 1 "
        "of 4 rows (2 values, at most 8 bytes in float32) but carries 12 bytes of values"
    ) in caplog.text
    # clients 0 and 2 each moved their own row; row 1 (the rejected client's) and row 3 did not
    moved = np.flatnonzero(coordinator.params != start).tolist()
    assert moved == [0, 2, 4, 6]
    # the bytes received count the rejected upload too: 3 x (1-byte bitmask + 2 values) + 4
    assert record["bytes_up"] == 3 * (1 + 8) + 4
