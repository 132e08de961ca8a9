"""A client with a valid certificate that lies (about its size, its update, its metrics) is
refused with a reason or outweighed, and the run keeps learning; real processes over gRPC."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fedloom.core.task import EVALUATE, MODEL, Blob
from fedloom.transport.certs import client_bundle
from fedloom.transport.client import BlobCache, Connection
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.wire import blob_refs, spec_to_proto
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

MB = 1024 * 1024
HUGE = 10**9


class Liar:
    """client-3: declares 10**9 examples, then lies differently in each round."""

    def __init__(self, port: int, certs: Path) -> None:
        self.conn = Connection(
            f"{h.HOST}:{port}", bundle=client_bundle(certs, "client-3"), max_message_bytes=4 * MB
        )
        self.replies: dict[int, str] = {}
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            self.conn.join("client-3", "", ["fit", "evaluate"])
            self.conn.ready(HUGE, 10)
            cache = BlobCache()
            while True:
                reply = self.conn.poll(2.0)
                if reply.WhichOneof("outcome") == "finished":
                    return
                if reply.WhichOneof("outcome") == "task":
                    blobs = self.conn.fetch_blobs(reply.task, cache)
                    gp = blobs[next(r.digest for r in blob_refs(reply.task) if r.role == MODEL)]
                    self.answer(reply.task, gp)
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)
        finally:
            self.conn.close()

    def answer(self, task: pb.TaskProto, gp: Blob) -> None:
        header = pb.UploadHeader(session_id=self.conn.session_id, task_id=task.task_id)
        if task.kind == EVALUATE:  # an accuracy no model reaches, a loss no float32 holds
            header.num_examples = 10
            header.metrics.update({"accuracy": 2.5e299, "loss": 1e308})
            self.conn.stub.UploadResult(
                iter([pb.UploadChunk(header=header)]), timeout=30, metadata=self.conn.metadata
            )
            return
        global_vec = gp.decode()
        update, n = {
            1: (-global_vec, HUGE),  # replace the model with zeros, with all the weight
            2: (np.zeros_like(global_vec), 0),  # no weight at all
            3: (np.full_like(global_vec, 1e30), 100),  # huge finite values
            4: (-10 * global_vec, 100),  # sign-flipped and scaled
        }.get(task.round, (np.zeros_like(global_vec), HUGE))
        header.num_examples = n
        header.metrics["train_loss"] = 1e308
        data = gp.codec.encode(update.astype(np.float32))
        header.payload_bytes, header.codec = len(data), gp.codec.name
        header.spec.CopyFrom(spec_to_proto(gp.spec))
        msgs = [pb.UploadChunk(header=header), pb.UploadChunk(data=data)]
        reply = self.conn.stub.UploadResult(iter(msgs), timeout=30, metadata=self.conn.metadata)
        self.replies[task.round] = reply.reason


def test_a_lying_client_is_refused_or_outweighed_and_the_run_keeps_learning(
    tmp_path: Path, certs: Path
) -> None:
    # Prepare: three honest clients and the liar, all selected every round; updates over norm
    # 2 (honest ones are about 0.55 here) are refused, and no client weighs over 500 examples
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=6,
        partition={"num_clients": 3},
        eval={"federated": True},
        strategy={"max_update_norm": 2.0, "max_update_norm_action": "reject"},
        server={"min_clients": 4, "max_client_examples": 500},
    )
    port = h.free_port()
    log = tmp_path / "server.log"
    procs = [h.server(config, port, certs, tmp_path / "state", tmp_path / "out", log)]
    liar = Liar(port, certs)
    thread = threading.Thread(target=liar.run)
    try:
        h.listening(log, procs[0])
        for i in range(3):
            data = ["--dataset", "digits", "--partition", f"{i}/3"]
            procs.append(h.client(port, f"client-{i}", certs, tmp_path / f"c{i}.log", data))
        thread.start()

        # Execute
        assert h.wait(procs[0], 150, log) == 0, h.read(log)
        thread.join(30)
        codes = [h.wait(p, 30, tmp_path / f"c{i}.log") for i, p in enumerate(procs[1:])]
    finally:
        h.stop_all(procs)

    # Assert: every round completed; the lies were refused or capped, each with its reason
    server_log = h.read(log)
    assert not liar.errors, liar.errors
    assert codes == [0, 0, 0]
    assert "Traceback" not in server_log
    records = h.records(tmp_path / "out")
    assert [(r["status"], r["returned"], r["rejected"]) for r in records] == [
        ("ok", 3, 1),  # -global: norm over 2
        ("ok", 3, 1),  # num_examples 0
        ("ok", 3, 1),  # 1e30 everywhere
        ("ok", 3, 1),  # -10 x global
        ("ok", 4, 0),  # zeros, weighted as 500 examples, not 10**9
        ("ok", 4, 0),
    ]
    assert "declares 1000000000 training examples, over server.max_client_examples=500" in (
        server_log
    )
    assert "claims 1000000000 examples, it declared 500; weighted as 500" in server_log
    assert "positive num_examples (its aggregation weight), got 0" in liar.replies[2]
    assert "is over strategy.max_update_norm=2" in server_log
    assert "reported implausible metrics, left out" in server_log
    assert "accuracy (2.5e+299 is outside [0, 1])" in server_log
    # the train loss and the federated accuracy are the honest clients' own
    assert all(r["train_loss"] < 10 and r["fed_accuracy_max"] <= 1 for r in records)
    # the attack-free run of the three honest clients (`fedloom run`, same config) reaches 0.825
    assert records[-1]["accuracy"] > 0.825 - 0.05
