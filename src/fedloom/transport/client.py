"""The client side of the protocol: a channel (TLS, mTLS or plaintext) and one call per RPC, with
chunked download into a content-hash cache and chunked upload."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from fedloom.core.codec import get_codec
from fedloom.core.params import Params
from fedloom.core.task import GlobalParams, Result
from fedloom.transport.certs import Bundle
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.proto import fedloom_transport_pb2_grpc as pb_grpc
from fedloom.transport.wire import (
    COMPRESSIONS,
    PROTOCOL_VERSION,
    chunks,
    spec_from_proto,
    spec_to_proto,
)

RPC_TIMEOUT = 30.0


@dataclass
class Backoff:
    """Exponential backoff with full jitter: the n-th wait is uniform in [0, min(cap, base * 2^n)],
    so many clients that lost the same server do not all come back in the same instant."""

    base: float = 0.5
    cap: float = 30.0
    attempt: int = 0
    rng: random.Random | None = None

    def next(self) -> float:
        rng = self.rng or random
        wait = rng.uniform(0, min(self.cap, self.base * 2**self.attempt))
        self.attempt += 1
        return max(wait, 0.05)

    def reset(self) -> None:
        self.attempt = 0


class ParamsCache:
    """The last global model this client downloaded, by content hash."""

    def __init__(self) -> None:
        self.digest: str | None = None
        self.global_params: GlobalParams | None = None
        self.params: Params | None = None
        self.downloads = 0
        self.bytes_down = 0


class Connection:
    """One channel to the server and the calls of the protocol."""

    def __init__(
        self,
        address: str,
        *,
        bundle: Bundle | None,
        max_message_bytes: int,
        server_name: str | None = None,
    ) -> None:
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if bundle is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=bundle.ca,
                private_key=bundle.key,
                certificate_chain=bundle.cert,
            )
            self.channel = grpc.secure_channel(address, creds, options=options)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.session_id = ""
        self.compression = grpc.Compression.NoCompression

    def close(self) -> None:
        self.channel.close()

    def join(self, name: str, token: str, task_kinds: list[str]) -> pb.JoinReply:
        reply: pb.JoinReply = self.stub.Join(
            pb.JoinRequest(
                protocol_version=PROTOCOL_VERSION,
                client_name=name,
                token=token,
                compressions=list(COMPRESSIONS),
                task_kinds=task_kinds,
            ),
            timeout=RPC_TIMEOUT,
        )
        self.session_id = reply.session_id
        if reply.compression == "gzip":
            self.compression = grpc.Compression.Gzip
        return reply

    def ready(self, num_examples: int, num_test_examples: int) -> None:
        self.stub.Ready(
            pb.ReadyRequest(
                session_id=self.session_id,
                num_examples=num_examples,
                num_test_examples=num_test_examples,
            ),
            timeout=RPC_TIMEOUT,
        )

    def heartbeat(self) -> bool:
        reply: pb.HeartbeatReply = self.stub.Heartbeat(
            pb.HeartbeatRequest(session_id=self.session_id), timeout=RPC_TIMEOUT
        )
        return reply.run_active

    def poll(self, poll_seconds: float) -> pb.PollReply:
        reply: pb.PollReply = self.stub.PollTask(
            pb.PollRequest(session_id=self.session_id), timeout=poll_seconds + RPC_TIMEOUT
        )
        return reply

    def leave(self) -> None:
        self.stub.Leave(pb.LeaveRequest(session_id=self.session_id), timeout=5.0)

    def fetch_params(self, task: pb.TaskProto, cache: ParamsCache) -> tuple[GlobalParams, Params]:
        """The task's global params: from the cache when the content hash matches, else
        downloaded in chunks (resuming from the last byte received if the stream breaks) and
        checked against the hash."""
        if cache.digest == task.params_digest and cache.params is not None:
            assert cache.global_params is not None
            return cache.global_params, cache.params
        buf = bytearray(task.params_bytes)
        received = 0
        for attempt in range(4):
            try:
                for chunk in self.stub.DownloadParams(
                    pb.DownloadRequest(
                        session_id=self.session_id,
                        params_digest=task.params_digest,
                        offset=received,
                    ),
                    timeout=RPC_TIMEOUT + task.params_bytes / 1e6,
                    compression=self.compression,
                ):
                    end = chunk.offset + len(chunk.data)
                    if chunk.offset != received or end > task.params_bytes:
                        raise ValueError(f"params chunk at offset {chunk.offset} out of order")
                    buf[chunk.offset : end] = chunk.data
                    received = end
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 3:
                    raise
            if received == task.params_bytes:
                break
        if received != task.params_bytes:
            raise ValueError(f"params download stopped at {received} of {task.params_bytes} bytes")
        payload = bytes(buf)
        del buf
        digest = hashlib.sha256(payload).hexdigest()
        if digest != task.params_digest:
            raise ValueError(
                f"downloaded params hash to {digest[:12]}, the task names {task.params_digest[:12]}"
            )
        spec = spec_from_proto(task.spec)
        gp = GlobalParams(spec=spec, codec=get_codec(task.codec), payload=payload, digest=digest)
        params = spec.unflatten(gp.decode())
        cache.digest, cache.global_params, cache.params = digest, gp, params
        cache.downloads += 1
        cache.bytes_down += len(payload)
        return gp, params

    def upload(
        self, task: pb.TaskProto, result: Result, global_params: GlobalParams, chunk_bytes: int
    ) -> pb.UploadReply:
        """Send ``result`` as a header and payload chunks; the reply says if it was accepted."""
        reply: pb.UploadReply = self.stub.UploadResult(
            upload_messages(self.session_id, task, result, global_params, chunk_bytes),
            timeout=RPC_TIMEOUT + len(result.payload or b"") / 1e6,
            compression=self.compression,
        )
        return reply


def upload_messages(
    session_id: str,
    task: pb.TaskProto,
    result: Result,
    global_params: GlobalParams,
    chunk_bytes: int,
) -> Iterator[pb.UploadChunk]:
    """The message stream of one upload: the header, then the payload in chunks."""
    payload = result.payload or b""
    header = pb.UploadHeader(
        session_id=session_id,
        task_id=task.task_id,
        num_examples=result.num_examples,
        metrics={k: float(v) for k, v in result.metrics.items() if _is_scalar(v)},
        error=result.error or "",
        payload_bytes=len(payload),
        codec=global_params.codec.name,
        spec=spec_to_proto(global_params.spec),
        seconds=result.seconds,
    )
    yield pb.UploadChunk(header=header)
    for piece in chunks(payload, chunk_bytes):
        yield pb.UploadChunk(data=bytes(piece))


def _is_scalar(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
