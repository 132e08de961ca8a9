"""``Hub.client_table``: the read-only snapshot of the clients a deployment has seen."""

from __future__ import annotations

import time

import numpy as np

from fedloom.core.codec import Float32Codec
from fedloom.core.params import ParamSpec
from fedloom.core.task import FIT, MODEL, Blob, Result, Task, Upload, blob_table
from fedloom.transport.hub import Hub

SPEC = ParamSpec(names=("w",), shapes=((2,),), dtypes=("<f4",))


def test_the_table_counts_rounds_results_failures_drops_and_rejections() -> None:
    ids = {"alice": 0, "bob": 1, "carol": 2}
    hub = Hub(ids.__getitem__, heartbeat_timeout=60.0)
    before = time.time()
    sessions = {
        name: hub.join(name, f"ipv4:127.0.0.1:{5000 + i}", [FIT]) for i, name in enumerate(ids)
    }
    for n, s in enumerate(sessions.values()):
        hub.ready(s.session_id, num_examples=10 * (n + 1), num_test_examples=0)
    model = Blob.encode(SPEC, Float32Codec(), np.zeros(2, np.float32))

    def task(r: int, cid: int) -> Task:
        return Task(FIT, r, cid, blobs={MODEL: model.digest}, upload=Upload("float32", 2))

    for r in (1, 2):
        batch = hub.dispatch([task(r, 0), task(r, 1), task(r, 2)], blob_table(model), 60.0)
        by_client = {p.task.client_id: p for p in batch.pending.values()}
        assert hub.complete(by_client[0], Result(by_client[0].task, 5, payload=b"\0" * 8))
        if r == 1:
            hub.complete(by_client[1], Result(by_client[1].task, error="RuntimeError: disk full"))
            hub.complete(
                by_client[2], Result(by_client[2].task), rejected=f"round {r}: 3 non-finite values"
            )
        else:
            hub.complete(by_client[1], Result(by_client[1].task, 5, payload=b"\0" * 8))
            hub.leave(sessions["carol"].session_id)  # its open task is dropped
        hub.close_batch(batch)

    table = hub.client_table()
    assert [
        (
            row["name"],
            row["connected"],
            row["rounds_joined"],
            row["results"],
            row["failures"],
            row["dropped"],
            row["rejected"],
            row["last_rejection"],
        )
        for row in table
    ] == [
        ("alice", True, 2, 2, 0, 0, 0, None),
        ("bob", True, 2, 1, 1, 0, 0, None),
        ("carol", False, 2, 0, 0, 1, 1, "round 1: 3 non-finite values"),
    ]
    assert [row["peer"] for row in table] == ["ipv4:127.0.0.1:5000", "ipv4:127.0.0.1:5001", None]
    assert [row["num_examples"] for row in table] == [10, 20, None]
    assert all(before - 1 <= row["last_seen"] <= time.time() + 1 for row in table)
    # a snapshot: changing it changes nothing in the hub
    table[0]["failures"] = 99
    assert hub.client_table()[0]["failures"] == 0
