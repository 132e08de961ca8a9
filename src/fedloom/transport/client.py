"""The client side of the protocol: a channel (TLS, mTLS or plaintext) and one call per RPC, with
chunked download of a task's blobs into a content-hash cache and chunked upload."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from fedloom.core.codec import get_codec
from fedloom.core.task import MODEL, Blob, Result, blob_digest
from fedloom.transport.certs import Bundle
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.proto import fedloom_transport_pb2_grpc as pb_grpc
from fedloom.transport.wire import (
    CLIENT_METADATA,
    COMPRESSIONS,
    PROTOCOL_VERSION,
    TOKEN_METADATA,
    blob_refs,
    chunks,
    declared_rows,
    spec_from_proto,
    upload_from_proto,
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


class BlobCache:
    """The blobs of this client's latest tasks, by content hash.

    A blob a task names again (an unchanged model, an evaluation on the model just trained on,
    a control variate the server did not update) is not downloaded again. The cache keeps the
    blobs of the latest ``keep_tasks`` tasks and lets go of the rest, so it never grows over a
    run: two by default, so that a fit and the evaluation between two fits, which name
    different blobs (the evaluation no control variate), do not evict each other's.
    """

    def __init__(self, keep_tasks: int = 2) -> None:
        if keep_tasks < 1:
            raise ValueError(f"keep_tasks must be >= 1, got {keep_tasks}")
        self.blobs: dict[str, Blob] = {}
        self.downloads = 0
        self.bytes_down = 0
        self._recent: deque[frozenset[str]] = deque(maxlen=keep_tasks)

    def get(self, digest: str) -> Blob | None:
        return self.blobs.get(digest)

    def add(self, blob: Blob) -> None:
        self.blobs[blob.digest] = blob
        self.downloads += 1
        self.bytes_down += len(blob.payload)

    def hold(self, blob: Blob) -> None:
        """Keep ``blob`` (made here, not downloaded) with the latest task's blobs: the model this
        client decoded, which the server's next delta is taken against (``BASE``)."""
        self.blobs[blob.digest] = blob
        if self._recent:
            self._recent[-1] = self._recent[-1] | {blob.digest}

    def used(self, digests: Iterable[str]) -> None:
        """A task used ``digests``; let go of every blob none of the latest tasks used."""
        self._recent.append(frozenset(digests))
        keep = frozenset().union(*self._recent)
        self.blobs = {d: b for d, b in self.blobs.items() if d in keep}


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
        # Sent with every call: the server authenticates a call by it before reading a stream,
        # and a session id alone (under token auth) is no credential.
        self.metadata: tuple[tuple[str, str], ...] = ()

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
        self.metadata = credentials(name, token)
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
            metadata=self.metadata,
        )

    def heartbeat(self) -> bool:
        reply: pb.HeartbeatReply = self.stub.Heartbeat(
            pb.HeartbeatRequest(session_id=self.session_id),
            timeout=RPC_TIMEOUT,
            metadata=self.metadata,
        )
        return reply.run_active

    def poll(self, poll_seconds: float) -> pb.PollReply:
        reply: pb.PollReply = self.stub.PollTask(
            pb.PollRequest(session_id=self.session_id),
            timeout=poll_seconds + RPC_TIMEOUT,
            metadata=self.metadata,
        )
        return reply

    def leave(self) -> None:
        self.stub.Leave(
            pb.LeaveRequest(session_id=self.session_id), timeout=5.0, metadata=self.metadata
        )

    def fetch_blobs(self, task: pb.TaskProto, cache: BlobCache) -> dict[str, Blob]:
        """Every blob the task names, by digest: from the cache when held, else downloaded.

        ``ValueError`` when a blob fails its content hash or names a codec or spec this client
        cannot read; ``grpc.RpcError`` when the server no longer serves it (``NOT_FOUND``: the
        task's round closed).
        """
        refs = blob_refs(task)
        blobs: dict[str, Blob] = {}
        for ref in refs:
            if ref.digest in blobs:
                continue  # two roles, one payload
            blob = cache.get(ref.digest)
            if blob is None:
                blob = self._download(ref)
                cache.add(blob)
            blobs[ref.digest] = blob
        cache.used(blobs)
        return blobs

    def _download(self, ref: pb.BlobRef) -> Blob:
        """One blob, in chunks, resuming from the last byte received if the stream breaks, and
        checked against its content hash."""
        spec = spec_from_proto(ref.spec)
        codec = get_codec(ref.codec)
        size = ref.num_bytes
        if size < 0:
            raise ValueError(f"the {ref.role!r} blob is announced with {size} bytes")
        buf = bytearray(size)
        received = 0
        for attempt in range(4):
            try:
                for chunk in self.stub.DownloadParams(
                    pb.DownloadRequest(
                        session_id=self.session_id, params_digest=ref.digest, offset=received
                    ),
                    timeout=RPC_TIMEOUT + size / 1e6,
                    compression=self.compression,
                    metadata=self.metadata,
                ):
                    end = chunk.offset + len(chunk.data)
                    if chunk.offset != received or end > size:
                        raise ValueError(
                            f"{ref.role!r} blob chunk at offset {chunk.offset} out of order"
                        )
                    buf[chunk.offset : end] = chunk.data
                    received = end
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 3:
                    raise
            if received == size:
                break
        if received != size:
            raise ValueError(f"{ref.role!r} blob download stopped at {received} of {size} bytes")
        payload = bytes(buf)
        del buf
        mask, base = ref.mask or None, ref.base or None
        digest = blob_digest(payload, mask, base)
        if digest != ref.digest:
            raise ValueError(
                f"the downloaded {ref.role!r} blob hashes to {digest[:12]}, the task names "
                f"{ref.digest[:12]}"
            )
        return Blob(spec=spec, codec=codec, payload=payload, digest=digest, mask=mask, base=base)

    def upload(self, task: pb.TaskProto, result: Result, chunk_bytes: int) -> pb.UploadReply:
        """Send ``result`` as a header and payload chunks; the reply says if it was accepted."""
        reply: pb.UploadReply = self.stub.UploadResult(
            upload_messages(self.session_id, task, result, chunk_bytes),
            timeout=RPC_TIMEOUT + len(result.payload or b"") / 1e6,
            compression=self.compression,
            metadata=self.metadata,
        )
        return reply


def credentials(name: str, token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that names the client and carries its enrolment token (if any)."""
    return (
        ((CLIENT_METADATA, name), (TOKEN_METADATA, token)) if token else ((CLIENT_METADATA, name),)
    )


def upload_messages(
    session_id: str, task: pb.TaskProto, result: Result, chunk_bytes: int
) -> Iterator[pb.UploadChunk]:
    """The message stream of one upload: the header, then the payload in chunks.

    The header declares the task's upload codec and, for an upload of the model's size, the
    model's spec, and for a row-sparse upload the rows its bitmask sets (the server checks them
    all); a failed or metrics-only result declares none of them.
    """
    payload = result.payload or b""
    header = pb.UploadHeader(
        session_id=session_id,
        task_id=task.task_id,
        num_examples=result.num_examples,
        metrics={k: float(v) for k, v in result.metrics.items() if _is_scalar(v)},
        error=result.error or "",
        payload_bytes=len(payload),
        seconds=result.seconds,
    )
    upload = upload_from_proto(task) if result.ok else None
    if upload is not None:
        header.codec = upload.codec
        model = next((ref for ref in blob_refs(task) if ref.role == MODEL), None)
        if model is not None and spec_from_proto(model.spec).size == upload.size:
            header.spec.CopyFrom(model.spec)
        if upload.rows is not None:
            header.touched_rows = declared_rows(payload, upload.rows)
    yield pb.UploadChunk(header=header)
    for piece in chunks(payload, chunk_bytes):
        yield pb.UploadChunk(data=bytes(piece))


def _is_scalar(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
