"""The gRPC side of the server: authentication, chunked transfer and upload validation.

Every handler authenticates its caller before it touches the hub or reads a stream: ``Join``
checks the client's mTLS certificate (its common name is the client's identity) or its enrolment
token, and every later call must present its session id together with the credential it joined
with: the same certificate under mTLS, or its name and enrolment token in the call metadata
(``fedloom-client``, ``fedloom-token``) under token auth, so a leaked session id alone is useless.
Client-supplied strings are shortened before they are logged.

Uploads are checked against what the task asked for (``Task.upload``: codec and number of values)
while they stream in: the declared codec must be the task's, the declared length at most what that
codec declares for the task's size (``Upload.max_bytes``), checked before a byte is read, and
reading stops at the first byte over the declared length. A row-sparse upload (``Upload.rows``)
declares the rows its bitmask sets (``touched_rows``); its declared length must be the bitmask plus
at most what those rows take, before a byte is read, and its bitmask must set exactly that many
rows once it is read. The payload is then validated with
``fedloom.core.validation.decode_update``, the check the coordinator applies again, so a bad
update is refused with a reason the client sees and never reaches the global model. A task without
an upload takes metrics only. Non-finite metrics (an AUC on a split with one class) are left out
with ``plausible_metrics`` (so are fractions outside [0, 1] and negative or overflowing
losses), as the coordinator does in simulation, and the result is kept. The hub
counts the payload bytes streamed each way.

This module depends on the core and the hub only, never on ``fedloom.server``: the deployment
server builds on the transport, not the other way round.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import grpc

from fedloom.core.codec import get_codec
from fedloom.core.task import EVALUATE, FIT, Result, RowSparse
from fedloom.core.validation import check_upload, describe_dropped, plausible_metrics
from fedloom.errors import DeploymentError, UpdateRejected
from fedloom.transport.certs import Bundle, RevocationList, check_token
from fedloom.transport.hub import Hub, PendingTask, Session
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.proto import fedloom_transport_pb2_grpc as pb_grpc
from fedloom.transport.wire import (
    CLIENT_METADATA,
    PROTOCOL_VERSION,
    TOKEN_METADATA,
    chunks,
    declared_rows,
    spec_from_proto,
    spec_mismatch,
    task_to_proto,
)

log = logging.getLogger("fedloom.server")

CLIENT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: no trailing newline
# How much of a client-supplied string (a name, an error) the log shows.
SHOWN_CHARS = 80
# A Join carries a name, a token and a few short lists: anything bigger is not a client's.
MAX_JOIN_BYTES = 64 * 1024
# Room for the protobuf framing of a chunk on top of its data.
FRAME_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class ServiceSettings:
    """What the service tells clients and enforces."""

    run_id: str
    config_json: str
    auth: str  # "mtls", "token" or "none" (plaintext without tokens, --insecure)
    enrolment_key: bytes | None
    heartbeat_seconds: float
    poll_seconds: float
    chunk_bytes: int
    compression: str  # "gzip" or "none"
    max_client_examples: int | None = None  # cap on a client's declared training examples
    first_message_s: float = 10.0  # an upload stream must send its header within this
    idle_stream_s: float = 30.0  # and then a message at least this often
    allowed_clients: frozenset[str] | None = None  # None: every authenticated client
    revoked_file: Path | None = None  # revoked.txt of `fedloom certs --revoke`, re-read on change


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort raises


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` as a log shows it: quoted, escaped, and cut to ``limit`` characters."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _metadata(context: grpc.ServicerContext, key: str) -> str:
    values = [v for k, v in context.invocation_metadata() if k == key]
    return str(values[0]) if values else ""


def _peer_common_name(context: grpc.ServicerContext) -> str | None:
    values = context.auth_context().get("x509_common_name") or []
    return values[0].decode() if values else None


class FederationService(pb_grpc.FederationServicer):
    """The ``fedloom.transport.v1.Federation`` service over a ``Hub``."""

    def __init__(self, hub: Hub, settings: ServiceSettings) -> None:
        self.hub = hub
        self.settings = settings
        self._revoked = RevocationList(settings.revoked_file)
        self._polling: set[str] = set()  # sessions with a long-poll in flight (one each)
        self._polling_lock = threading.Lock()

    # -- authentication ---------------------------------------------------------------------
    def _refuse(self, context: grpc.ServicerContext, message: str) -> NoReturn:
        log.warning("refused client at %s: %s", context.peer(), message)
        _abort(context, grpc.StatusCode.UNAUTHENTICATED, message)

    def _identify(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> str:
        name = request.client_name
        if self.settings.auth == "mtls":
            cn = _peer_common_name(context)
            if cn is None:
                self._refuse(context, "no client certificate was presented; use mTLS (--certs)")
            if name and name != cn:
                self._refuse(
                    context,
                    f"the client calls itself {shown(name)} but its certificate is for {cn!r}",
                )
            name = cn
        self._check_name(name, context)
        if self._uses_tokens:
            self._check_token(name, request.token, context)
        self._permit(name, context)
        return name

    def _permit(
        self, name: str, context: grpc.ServicerContext, session_id: str | None = None
    ) -> None:
        """Refuse a client that is not on the run's allow-list or has been revoked; a revoked
        client's session is closed (its open task fails at once)."""
        allowed = self.settings.allowed_clients
        why = None
        if allowed is not None and name not in allowed:
            why = f"client {name!r} is not on this run's allow-list (server.allowed_clients)"
        elif name in self._revoked:
            why = f"client {name!r} has been revoked (fedloom certs --revoke)"
        if why is None:
            return
        if session_id is not None:
            self.hub.leave(session_id)
        self._refuse(context, why)

    @property
    def _uses_tokens(self) -> bool:
        return self.settings.auth == "token" or (
            self.settings.auth == "none" and self.settings.enrolment_key is not None
        )

    def _check_name(self, name: str, context: grpc.ServicerContext) -> None:
        if not CLIENT_NAME.fullmatch(name or ""):
            self._refuse(
                context, f"invalid client name {shown(name)}: use 1-64 of A-Z a-z 0-9 . _ -"
            )

    def _check_token(self, name: str, token: str, context: grpc.ServicerContext) -> None:
        key = self.settings.enrolment_key
        assert key is not None
        if not token:
            self._refuse(context, f"client {name!r} sent no enrolment token")
        if not check_token(key, name, token):
            self._refuse(context, f"invalid enrolment token for client {name!r}")

    def _caller(self, context: grpc.ServicerContext) -> str | None:
        """The client a call after ``Join`` comes from, authenticated by the credential it
        carries (its certificate, or its name and token in the call metadata) before anything
        else is read; None when the server authenticates no one (``--insecure``, no key)."""
        if self.settings.auth == "mtls":
            cn = _peer_common_name(context)
            if cn is None:
                self._refuse(context, "no client certificate was presented; use mTLS (--certs)")
            return cn
        if not self._uses_tokens:
            return None
        name = _metadata(context, CLIENT_METADATA)
        if not name:
            self._refuse(
                context,
                "the call carries no client name and enrolment token (fedloom-client and "
                "fedloom-token metadata); upgrade the fedloom client",
            )
        self._check_name(name, context)
        self._check_token(name, _metadata(context, TOKEN_METADATA), context)
        return name

    def _session(
        self, session_id: str, context: grpc.ServicerContext, caller: str | None = None
    ) -> Session:
        """The caller's session. ``caller``: the already authenticated caller (``_caller``), for
        a stream authenticated before its first message was read."""
        if caller is None:
            caller = self._caller(context)
        session = self.hub.session(session_id)
        if session is None:
            _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "unknown session (the server restarted or dropped this client); join again",
            )
        if caller is not None and caller != session.name:
            what = "certificate" if self.settings.auth == "mtls" else "enrolment token"
            self._refuse(context, f"session of {session.name!r} used with the {what} of {caller!r}")
        self._permit(session.name, context, session.session_id)
        return session

    # -- handlers ---------------------------------------------------------------------------
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        if request.ByteSize() > MAX_JOIN_BYTES:
            self._refuse(
                context, f"a Join request of {request.ByteSize()} bytes (at most {MAX_JOIN_BYTES})"
            )
        if request.protocol_version != PROTOCOL_VERSION:
            _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {request.protocol_version} is not supported; this server "
                f"speaks version {PROTOCOL_VERSION} (upgrade fedloom on the older side)",
            )
        name = self._identify(request, context)
        kinds = list(request.task_kinds) or [FIT, EVALUATE]
        session = self.hub.join(name, context.peer(), kinds)
        compression = self.settings.compression
        if compression not in request.compressions:
            compression = "none"
        return pb.JoinReply(
            session_id=session.session_id,
            client_id=session.client_id,
            run_id=self.settings.run_id,
            config_json=self.settings.config_json,
            heartbeat_seconds=self.settings.heartbeat_seconds,
            poll_seconds=self.settings.poll_seconds,
            chunk_bytes=self.settings.chunk_bytes,
            compression=compression,
            protocol_version=PROTOCOL_VERSION,
        )

    def Ready(self, request: pb.ReadyRequest, context: grpc.ServicerContext) -> pb.ReadyReply:
        session = self._session(request.session_id, context)
        if request.num_examples < 0 or request.num_test_examples < 0:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "example counts must be >= 0")
        num_examples, cap = request.num_examples, self.settings.max_client_examples
        if cap is not None and num_examples > cap:
            log.warning(
                "client %s declares %d training examples, over server.max_client_examples=%d; "
                "it is weighted as %d",
                session.name,
                num_examples,
                cap,
                cap,
            )
            num_examples = cap
        self.hub.ready(session.session_id, num_examples, request.num_test_examples)
        return pb.ReadyReply()

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatReply:
        session = self._session(request.session_id, context)
        if self.hub.finished:
            self.hub.told_finished(session.session_id)
        return pb.HeartbeatReply(run_active=not self.hub.finished)

    def PollTask(self, request: pb.PollRequest, context: grpc.ServicerContext) -> pb.PollReply:
        session = self._session(request.session_id, context)
        with self._polling_lock:
            busy = session.session_id in self._polling
            self._polling.add(session.session_id)
        if busy:  # one long-poll per session: more would only hold more server threads
            _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "this session already has a poll in flight; poll again when it returns",
            )
        try:
            pending = self.hub.poll(session.session_id, self.settings.poll_seconds)
        finally:
            with self._polling_lock:
                self._polling.discard(session.session_id)
        if pending is None:
            if self.hub.finished:
                self.hub.told_finished(session.session_id)
                return pb.PollReply(finished=True)
            return pb.PollReply(idle=True)
        return pb.PollReply(
            task=task_to_proto(
                pending.task, pending.task_id, pending.blobs, pending.deadline_seconds
            )
        )

    def DownloadParams(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ParamsChunk]:
        session = self._session(request.session_id, context)
        blob = self.hub.blob(request.params_digest, session.session_id)
        if blob is None:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"blob {request.params_digest[:12]} is not named by an open task of this client "
                "(its round closed)",
            )
        total = len(blob.payload)
        if not 0 <= request.offset <= total:
            _abort(context, grpc.StatusCode.OUT_OF_RANGE, f"offset must be in [0, {total}]")
        if self.settings.compression == "gzip":
            context.set_compression(grpc.Compression.Gzip)
        offset = request.offset
        for piece in chunks(blob.payload, self.settings.chunk_bytes, request.offset):
            # Counted as it is handed to gRPC, so it is counted before the client can upload.
            self.hub.count_down(len(piece))
            yield pb.ParamsChunk(offset=offset, total_bytes=total, data=bytes(piece))
            offset += len(piece)

    def UploadResult(
        self, request_iterator: Iterable[pb.UploadChunk], context: grpc.ServicerContext
    ) -> pb.UploadReply:
        caller = self._caller(context)  # before a byte of the stream is read
        watchdog = _Watchdog(context, self.settings.first_message_s)
        try:
            return self._upload(request_iterator, context, caller, watchdog)
        except StreamIdle:
            log.warning(
                "closed an upload stream from %s (%s): no message for %g s",
                context.peer(),
                caller or "unauthenticated",
                watchdog.seconds,
            )
            return pb.UploadReply(accepted=False, reason="the stream was idle too long")
        finally:
            watchdog.stop()

    def _upload(
        self,
        request_iterator: Iterable[pb.UploadChunk],
        context: grpc.ServicerContext,
        caller: str | None,
        watchdog: _Watchdog,
    ) -> pb.UploadReply:
        stream = watchdog.watch(iter(request_iterator), self.settings.idle_stream_s)
        first = next(stream, None)
        if first is None or not first.HasField("header"):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "an upload starts with a header")
        header = first.header
        session = self._session(header.session_id, context, caller)
        pending = self.hub.pending(session.session_id, header.task_id)
        if pending is None:
            return pb.UploadReply(
                accepted=False,
                reason=f"task {header.task_id} is not open for this client (its round closed, "
                "or it was never assigned)",
            )
        task = pending.task
        if header.error:
            error = header.error[:4096]  # a client's own words, kept to a bounded length
            self.hub.complete(pending, Result(task, error=f"client {session.name}: {error}"))
            return pb.UploadReply(accepted=True, reason="recorded as a client failure")
        if header.num_examples < 0:
            return self._reject(
                pending, session, f"num_examples must be >= 0, got {header.num_examples}"
            )
        metrics, dropped = plausible_metrics(header.metrics)
        if dropped:
            log.warning(
                "round %d: client %s (id %d) reported implausible metrics, left out (the result "
                "is kept): %s",
                task.round,
                session.name,
                session.client_id,
                shown(describe_dropped(dropped), 400),
            )
        note = f"metrics left out: {describe_dropped(dropped)}" if dropped else ""
        if task.upload is None:
            if header.payload_bytes:
                return self._reject(
                    pending,
                    session,
                    f"a {task.kind} task takes metrics only, the upload declares "
                    f"{header.payload_bytes} bytes",
                )
            result = Result(
                task, num_examples=int(header.num_examples), metrics=metrics, seconds=header.seconds
            )
            if not self.hub.complete(pending, result):
                return pb.UploadReply(accepted=False, reason="the round's deadline passed")
            return pb.UploadReply(accepted=True, reason=note)
        payload, why = self._receive_update(header, pending, stream)
        if payload is None:
            return self._reject(pending, session, why or "no update")
        result = Result(
            task,
            num_examples=int(header.num_examples),
            payload=payload,
            metrics=metrics,
            seconds=header.seconds,
        )
        try:
            check_upload(result)
        except UpdateRejected as exc:
            # Delivered whole: the coordinator's own decode_update rejects it for the same reason.
            return self._reject(pending, session, str(exc))
        if not self.hub.complete(pending, result):
            return pb.UploadReply(accepted=False, reason="the round's deadline passed")
        return pb.UploadReply(accepted=True, reason=note)

    def _receive_update(
        self, header: pb.UploadHeader, pending: PendingTask, stream: Iterator[pb.UploadChunk]
    ) -> tuple[bytes | None, str | None]:
        """The update payload, or None and why not.

        The declared length is checked against the codec's declared size for the task before a
        byte is read, and reading stops at the first byte over the declared length, so an
        oversized upload costs the server no more memory than a correct one.
        """
        upload = pending.task.upload
        assert upload is not None
        if header.codec != upload.codec:
            return (
                None,
                f"update is encoded with {header.codec!r}, the task asks for {upload.codec!r}",
            )
        if header.HasField("spec"):
            why = self._spec_mismatch(header.spec, pending)
            if why:
                return None, why
        cap = upload.max_bytes()
        declared = header.payload_bytes
        if upload.rows is not None:
            why = _row_sparse_header(header, upload.rows)
            if why:
                return None, why
        elif header.HasField("touched_rows"):
            return None, "the header declares touched_rows, but the task's upload is not row-sparse"
        if not 0 <= declared <= cap:
            return None, (
                f"update is declared as {declared} bytes, the task's upload ({upload.size} values "
                f"of {upload.codec}) takes at most {cap} bytes"
            )
        buf = bytearray()
        received = 0
        try:
            for msg in stream:
                received += len(msg.data)
                if msg.HasField("header"):
                    return None, "a second header arrived in the middle of an upload"
                if len(buf) + len(msg.data) > declared:
                    return (
                        None,
                        f"update exceeds the size cap: it declared {declared} bytes and sent more",
                    )
                buf += msg.data
        except StreamIdle:
            raise  # UploadResult says why
        except Exception as exc:  # the stream broke: a message over the cap, a lost client
            return None, f"the upload broke off after {len(buf)} bytes: {exc}"
        finally:
            self.hub.count_up(received)
        if len(buf) != declared:
            return None, f"upload ended after {len(buf)} of {declared} bytes"
        payload = bytes(buf)
        if upload.rows is not None:
            try:
                sets = declared_rows(payload, upload.rows)
            except ValueError as exc:
                return None, f"row-sparse update does not match the task: {exc}"
            if sets != header.touched_rows:
                return None, (
                    f"the header declares {header.touched_rows} touched rows, the update's "
                    f"bitmask sets {sets}"
                )
        return payload, None

    @staticmethod
    def _spec_mismatch(msg: pb.ParamSpecProto, pending: PendingTask) -> str | None:
        """Why the spec an upload declares does not fit its task, or None.

        An upload of the model's size must have the model's names and shapes; an upload of another
        size (SCAFFOLD's model and control variate deltas) has no model spec to compare with, so
        only its size is checked.
        """
        upload, model = pending.task.upload, pending.model
        assert upload is not None
        try:
            got = spec_from_proto(msg)
        except ValueError as exc:
            return str(exc)
        if model is not None and upload.size == model.spec.size:
            return spec_mismatch(model.spec, got)
        if got.size != upload.size:
            return f"the update's spec holds {got.size} values, the task asks for {upload.size}"
        return None

    def _reject(self, pending: PendingTask, session: Session, reason: str) -> pb.UploadReply:
        log.warning(
            "round %d: update of client %s (id %d) rejected: %s",
            pending.task.round,
            session.name,
            session.client_id,
            reason[:1000],  # it may quote what the client declared
        )
        # Logged here, once: the engine and the coordinator count it as rejected (``rejected``
        # set) and never use it.
        delivered = Result(pending.task, rejected=reason)
        self.hub.complete(pending, delivered, rejected=reason)
        return pb.UploadReply(accepted=False, reason=f"update rejected: {reason}")

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:
        session = self._session(request.session_id, context)
        self.hub.leave(session.session_id)
        return pb.LeaveReply()


def _row_sparse_header(header: pb.UploadHeader, rows: RowSparse) -> str | None:
    """Why the header of a row-sparse upload is refused before a byte of it is read, or None.

    It must declare how many rows its bitmask sets (``touched_rows``, at most the model's rows),
    and a length of the bitmask plus at most what that many rows take in the task's codec
    (exactly that for a fixed-width codec; ``decode_row_sparse`` checks the payload itself once
    it is read)."""
    if not header.HasField("touched_rows"):
        return (
            "the task asks for a row-sparse upload (the rows the client touched) and the header "
            "declares no touched_rows; upgrade the fedloom client"
        )
    touched = header.touched_rows
    if not 0 <= touched <= rows.rows:
        return f"the header declares {touched} touched rows, the model has {rows.rows}"
    codec = get_codec(header.codec)
    values = touched * sum(rows.widths)
    most = rows.mask_bytes + codec.wire_size(values)
    if not rows.mask_bytes <= header.payload_bytes <= most:
        return (
            f"a row-sparse update of {touched} touched rows is the {rows.mask_bytes}-byte "
            f"bitmask and at most {most - rows.mask_bytes} bytes of values ({values} values of "
            f"{codec.name}), at most {most} bytes; it is declared as {header.payload_bytes}"
        )
    return None


class StreamIdle(Exception):
    """The watchdog cancelled a silent stream."""


class _Watchdog:
    """Cancels a call whose client goes silent: no first message within ``seconds``, then no
    message for ``idle`` seconds (``watch``). A stalled stream so holds a server thread for a
    bounded time, never forever."""

    def __init__(self, context: grpc.ServicerContext, seconds: float) -> None:
        self._context = context
        self.seconds = seconds
        self.fired = False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._arm(seconds)

    def _arm(self, seconds: float) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self.seconds = seconds
            self._timer = threading.Timer(seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self._context.cancel()

    def watch(self, stream: Iterator[pb.UploadChunk], idle: float) -> Iterator[pb.UploadChunk]:
        """``stream``, re-arming the timer at each message; ``StreamIdle`` once it fired."""
        try:
            for msg in stream:
                self._arm(idle)
                yield msg
        except grpc.RpcError:
            if self.fired:
                raise StreamIdle from None
            raise
        if self.fired:
            raise StreamIdle

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()


class _MalformedRequests(logging.Filter):
    """gRPC logs a request that does not parse as its method's protobuf with a full traceback;
    one line, without it, says the same in the server's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "deserializ" in str(record.msg).lower():
            record.msg = "dropped a request that is not a valid protobuf of its method"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_grpc_logs() -> None:
    """Install ``_MalformedRequests`` on the gRPC loggers that report them (once)."""
    for name in ("grpc._common", "grpc._server"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _MalformedRequests) for f in logger.filters):
            logger.addFilter(_MalformedRequests())


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # Fail loudly if another process holds the port, instead of silently sharing it.
        ("grpc.so_reuseport", 0),
    ]


def start_server(
    service: FederationService,
    address: str,
    *,
    bundle: Bundle | None,
    require_client_cert: bool,
    max_message_bytes: int,
    max_workers: int,
    max_concurrent_rpcs: int | None = None,
) -> tuple[grpc.Server, int]:
    """Start serving on ``address``; returns the server and the bound port.

    ``bundle`` None serves plaintext (``--insecure``). With ``require_client_cert`` the TLS
    handshake itself refuses clients without a certificate signed by the run's CA.
    ``max_concurrent_rpcs`` (default: twice ``max_workers``) bounds the calls the server holds
    at once; beyond it a call is refused with RESOURCE_EXHAUSTED and the client retries.
    """
    quiet_grpc_logs()
    if max_message_bytes < service.settings.chunk_bytes + FRAME_OVERHEAD:
        raise DeploymentError(
            f"server.max_message_mb ({max_message_bytes} bytes) must exceed the chunk size "
            f"({service.settings.chunk_bytes} bytes) plus {FRAME_OVERHEAD} bytes of framing"
        )
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedloom-rpc"),
        options=server_options(max_message_bytes),
        maximum_concurrent_rpcs=max_concurrent_rpcs or 2 * max_workers,
    )
    pb_grpc.add_FederationServicer_to_server(service, server)
    if bundle is None:
        port = server.add_insecure_port(address)
    else:
        assert bundle.cert is not None and bundle.key is not None
        creds = grpc.ssl_server_credentials(
            [(bundle.key, bundle.cert)],
            root_certificates=bundle.ca if require_client_cert else None,
            require_client_auth=require_client_cert,
        )
        port = server.add_secure_port(address, creds)
    if port == 0:
        raise DeploymentError(f"cannot listen on {address}: the address is in use or invalid")
    server.start()
    return server, port
