"""Bad clients are refused with a clear reason, and the run goes on without them."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedloom.core.task import MODEL, Blob
from fedloom.transport.certs import client_bundle, create_certs
from fedloom.transport.client import BlobCache, Connection
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.wire import blob_refs, spec_to_proto
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

MB = 1024 * 1024


def _header(conn: Connection, task: pb.TaskProto, gp: Blob, size: int) -> pb.UploadChunk:
    return pb.UploadChunk(
        header=pb.UploadHeader(
            session_id=conn.session_id,
            task_id=task.task_id,
            num_examples=50,
            payload_bytes=size,
            codec=gp.codec.name,
            spec=spec_to_proto(gp.spec),
        )
    )


def _send(conn: Connection, messages: list[pb.UploadChunk]) -> pb.UploadReply:
    reply: pb.UploadReply = conn.stub.UploadResult(iter(messages), timeout=30)
    return reply


class Attacker:
    """A client with a valid certificate that uploads a different bad update every round."""

    def __init__(self, port: int, certs: Path) -> None:
        self.conn = Connection(
            f"{h.HOST}:{port}", bundle=client_bundle(certs, "client-2"), max_message_bytes=64 * MB
        )
        self.replies: dict[str, str] = {}
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            self.conn.join("client-2", "", ["fit", "evaluate"])
            self.conn.ready(100, 0)
            cache = BlobCache()
            while True:
                reply = self.conn.poll(2.0)
                if reply.WhichOneof("outcome") == "finished":
                    return
                if reply.WhichOneof("outcome") == "task":
                    blobs = self.conn.fetch_blobs(reply.task, cache)
                    gp = blobs[next(r.digest for r in blob_refs(reply.task) if r.role == MODEL)]
                    self.attack(reply.task, gp)
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)
        finally:
            self.conn.close()

    def attack(self, task: pb.TaskProto, gp: Blob) -> None:
        size = len(gp.payload)
        if task.round == 1:  # the shapes of another model
            other = gp.spec.shapes[0][0] + 1, *gp.spec.shapes[0][1:]
            header = _header(self.conn, task, gp, size)
            del header.header.spec.shapes[0].dims[:]
            header.header.spec.shapes[0].dims.extend(other)
            self.replies["shape"] = _send(
                self.conn, [header, pb.UploadChunk(data=b"\0" * size)]
            ).reason
        elif task.round == 2:  # NaN
            vec = np.zeros(gp.spec.size, np.float32)
            vec[3] = np.nan
            data = gp.codec.encode(vec)
            msgs = [_header(self.conn, task, gp, size), pb.UploadChunk(data=data)]
            self.replies["nan"] = _send(self.conn, msgs).reason
        elif task.round == 3:  # garbage: random bytes, not the declared length
            junk = np.random.default_rng(0).bytes(1000)
            msgs = [_header(self.conn, task, gp, size), pb.UploadChunk(data=junk)]
            self.replies["garbage"] = _send(self.conn, msgs).reason
        elif task.round == 4:  # over the caps: too many bytes in total, then one huge message
            many = [_header(self.conn, task, gp, size)]
            many += [pb.UploadChunk(data=b"\0" * 1024) for _ in range(size // 1024 + 2)]
            self.replies["size_cap"] = _send(self.conn, many).reason
            huge = [pb.UploadChunk(data=b"\0" * (5 * MB))]  # one message over the 4 MB cap
            try:
                _send(self.conn, huge)
            except grpc.RpcError as exc:
                self.replies["message_cap"] = f"{exc.code().name}: {exc.details()}"


def test_bad_clients_are_rejected_and_the_run_continues(
    tmp_path: Path, certs: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Prepare: two honest clients and one attacker, all selected every round
    config = h.write_config(tmp_path / "run.yaml", rounds=4, server={"min_clients": 3})
    port = h.free_port()
    log = tmp_path / "server.log"
    procs = [h.server(config, port, certs, tmp_path / "state", tmp_path / "out", log)]
    stranger_certs = tmp_path_factory.mktemp("stranger")
    create_certs(stranger_certs, 3)  # a different CA
    try:
        for i in range(2):
            procs.append(
                h.client(
                    port,
                    f"client-{i}",
                    certs,
                    tmp_path / f"c{i}.log",
                    ["--dataset", "digits", "--partition", f"{i}/2"],
                )
            )
        h.wait_for_line(log, "waiting for clients", 60, procs[0])
        # Execute: unauthenticated clients try to join while the server waits for clients
        stranger = h.client(
            port,
            "client-0",
            stranger_certs,
            tmp_path / "stranger.log",
            ["--dataset", "digits", "--partition", "0/2"],
        )
        no_cert = tmp_path / "no-cert"
        no_cert.mkdir()
        (no_cert / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
        (no_cert / "client-5.token").write_text("not-a-valid-token\n")
        anonymous = h.client(
            port,
            "client-5",
            no_cert,
            tmp_path / "anonymous.log",
            ["--dataset", "digits", "--partition", "0/2"],
        )
        impostor = tmp_path / "impostor"
        impostor.mkdir()
        for suffix in ("crt", "key"):
            (impostor / f"client-4.{suffix}").write_bytes(
                (certs / f"client-3.{suffix}").read_bytes()
            )
        (impostor / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
        liar = h.client(
            port,
            "client-4",
            impostor,
            tmp_path / "liar.log",
            ["--dataset", "digits", "--partition", "0/2"],
        )
        with socket.create_connection((h.HOST, port)) as raw:  # bytes that are not gRPC at all
            raw.sendall(np.random.default_rng(1).bytes(4096))

        refused = {
            "stranger": h.wait(stranger, 60, tmp_path / "stranger.log"),
            "anonymous": h.wait(anonymous, 60, tmp_path / "anonymous.log"),
            "liar": h.wait(liar, 60, tmp_path / "liar.log"),
        }

        # Execute: then the attacker joins and the rounds run
        attacker = Attacker(port, certs)
        thread = threading.Thread(target=attacker.run)
        thread.start()
        h.wait_for_line(log, "client client-2 ready", 30, procs[0])

        assert h.wait(procs[0], 120, log) == 0, h.read(log)
        thread.join(30)
        codes = [h.wait(p, 30, tmp_path / f"c{i}.log") for i, p in enumerate(procs[1:])]
    finally:
        h.stop_all([*procs])

    # Assert: the honest clients finished every round; each bad update was refused with its reason
    assert not attacker.errors, attacker.errors
    assert codes == [0, 0]
    records = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["status"], r["returned"], r["rejected"]) for r in records] == [
        (r, "ok", 2, 1) for r in range(1, 5)
    ]
    replies = attacker.replies
    assert "'net.0.weight' has shape (17, 64), the model expects (16, 64)" in replies["shape"]
    assert "1 non-finite values" in replies["nan"]
    assert "upload ended after 1000 of" in replies["garbage"]
    assert replies["message_cap"].startswith("RESOURCE_EXHAUSTED")
    assert "exceeds the size cap" in replies["size_cap"]
    # Assert: unauthenticated clients were refused and told why; the server logged it
    assert refused == {"stranger": 3, "anonymous": 3, "liar": 3}
    assert "TLS handshake with the server failed" in h.read(tmp_path / "stranger.log")
    assert "it requires a client certificate (mTLS)" in h.read(tmp_path / "anonymous.log")
    liar_log = h.read(tmp_path / "liar.log")
    assert "calls itself 'client-4' but its certificate is for 'client-3'" in liar_log
    server_log = h.read(log)
    assert "refused client" in server_log
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in server_log  # gRPC's own handshake log line
