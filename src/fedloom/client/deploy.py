"""``fedloom client``: one participant of a real deployment, with its own local data.

The client connects out to the server (so it works behind NAT), joins, and long-polls for tasks.
At Join it advertises the task kinds it has stage handlers for (``fit``, ``evaluate``, and any stage
the ``--app`` module registered when it was imported). The local ``Client`` comes from a
``ClientFactory``, which ``fedloom.app.clients`` builds (a partition of a built-in dataset, a
CSV file, the user's ``--app``). For each task it takes the blobs the task
names (the model, a control variate) from its content-hash cache, downloading the others in chunks,
runs the same ``execute_task`` as every in-process engine, and uploads the result in chunks. A
heartbeat thread keeps the session alive during local training.

The client's state (error-feedback residuals, SCAFFOLD's control variate) lives in this process,
in a ``ClientStateStore`` that keeps the version before the newest: a round the server runs again
(it retried the round, or resumed after a crash) starts from the state it first started from. The
state is never uploaded. Without ``--state`` it is lost when the process exits, and a restarted
client would start SCAFFOLD again from a zero control variate while the server goes on with the
run: the result would silently differ from an uninterrupted run.

With ``--state DIR`` the store is also kept in ``DIR/client-state.safetensors``
(``STATE_FILE``): loaded at start, and written after every task that changed the state, before
the task's result is uploaded. The server aggregates only results it has received, so every state
whose update the server aggregated is on disk first, and a client killed at any point restarts
from it. The file records the run id and the client name: a file of another run or another client
is refused (unless it holds no state), because its state would not fit this run.

When the server is unreachable the client retries with exponential backoff and full jitter, and
joins again when the server comes back (for instance after a restart from its state folder). It
exits 0 when the run finishes, 3 when the server refuses it (authentication, protocol), and 4
when the server stays unreachable for ``give_up_after`` seconds. A ``--state`` file that cannot be
used (damaged, another run's or client's, not writable) stops it with ``DeploymentError``, which
``fedloom`` reports with the reason and exit code 2, as it does for the client's other local errors.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from fedloom.client.base import Client
from fedloom.client.execute import (
    DecodedBlobs,
    error_result,
    execute_task,
    stage_kinds,
    state_round,
)
from fedloom.client.state import ClientStateStore, State
from fedloom.config import Config
from fedloom.core.task import MODEL, Blob, Blobs, Result, Task
from fedloom.errors import DeploymentError
from fedloom.transport.certs import Bundle, client_bundle, read_token
from fedloom.transport.client import Backoff, BlobCache, Connection
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.wire import task_from_proto

log = logging.getLogger("fedloom.client")

ClientFactory = Callable[[Config, int], Client]
"""Builds the local ``Client`` from the run's config and the id the server gave this client."""

EXIT_FINISHED, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 3, 4
STATE_FILE = "client-state.safetensors"


@dataclass(frozen=True)
class ClientOptions:
    server: str
    name: str
    certs: Path | None = None
    insecure: bool = False
    token: str | None = None
    give_up_after: float = 600.0
    max_message_mb: float = 64.0
    quiet: bool = False
    state: Path | None = None
    """Folder for ``STATE_FILE``; None keeps the client state in memory only."""


def _data_sizes(client: Client) -> tuple[int, int]:
    n = int(getattr(client, "num_examples", 1))
    x_test = getattr(client, "x_test", None)
    n_test = len(x_test) if x_test is not None else int(getattr(client, "num_test_examples", 0))
    return n, n_test


def _is_handshake_failure(exc: grpc.RpcError) -> bool:
    text = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and any(
        s in text for s in ("handshake", "ssl", "certificate", "tsi_")
    )


class DeploymentClient:
    """The client process's main loop."""

    def __init__(self, opts: ClientOptions, factory: ClientFactory) -> None:
        self.opts = opts
        self.factory = factory
        self.client: Client | None = None
        self.cache = BlobCache()
        self.states = ClientStateStore(keep_previous=True)
        self.state_file = opts.state / STATE_FILE if opts.state is not None else None
        self.run_id = ""
        # run_id and client_name of the loaded file, checked against the run at Join
        self._file_owner: dict[str, str] = {}
        self._load_state()
        # Decoded once per task's set of blobs (a fit and the evaluation after it share the model).
        self._decoded = DecodedBlobs()
        # Local-DP noise must be unknown to the server, which chose the run's seed.
        self._noise_secret = secrets.randbits(128)
        self._decoded_for: frozenset[str] = frozenset()
        self.backoff = Backoff()
        self.tasks_done = 0
        self.unreachable_since: float | None = None
        # set when a heartbeat hears that the run is over: a task still at work then (FedBuff
        # keeps clients training across rounds) is not uploaded, and a server that has already
        # stopped is not waited for
        self.run_over = threading.Event()
        if opts.insecure:
            self.bundle: Bundle | None = None
            log.warning("--insecure: plaintext connection; nothing is encrypted or verified")
        else:
            if opts.certs is None:
                raise DeploymentError(
                    "--certs DIR is required: TLS is on by default (it needs the run's ca.crt, "
                    "plus NAME.crt/NAME.key or NAME.token), or pass --insecure for plaintext"
                )
            has_cert = (opts.certs / f"{opts.name}.crt").exists()
            self.bundle = client_bundle(opts.certs, opts.name, with_cert=has_cert)
        token = opts.token
        if (
            token is None
            and opts.certs is not None
            and (opts.certs / f"{opts.name}.token").exists()
        ):
            token = read_token(opts.certs, opts.name)
        self.token = token or ""
        if self.bundle is not None and self.bundle.cert is None and not token:
            raise DeploymentError(
                f"no credentials for {opts.name!r} in {opts.certs}: expected {opts.name}.crt and "
                f"{opts.name}.key (mTLS), or {opts.name}.token (or --token) for token auth"
            )

    def _load_state(self) -> None:
        """Take over the state file of a previous process of this client, if there is one.

        A damaged file stops the client (``ClientStateFileError`` says what to do): starting
        from zero instead would change the algorithm without anyone noticing."""
        if self.state_file is None:
            log.info(
                "client state (SCAFFOLD's control variate, error-feedback residuals) lives in "
                "memory only; it is lost if this process exits before the run ends (--state DIR "
                "keeps it on disk)"
            )
            return
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeploymentError(
                f"--state {self.state_file.parent}: cannot create the folder ({exc}); give a "
                "folder this client can write to"
            ) from exc
        if not self.state_file.exists():
            self._say(f"no client state in {self.state_file} yet; starting from zero state")
            return
        loaded, owner = ClientStateStore.load_with_metadata(self.state_file)
        loaded.keep_previous = True  # a deployment client reruns rounds; see ClientStateStore
        self.states = loaded
        self._file_owner = owner
        if len(loaded) == 0:
            self._say(f"client state file {self.state_file} holds no state; starting from zero")
            return
        name = owner.get("client_name")
        if name != self.opts.name:
            whose = f"client {name!r}" if name else "no named client"
            raise DeploymentError(
                f"the client state file {self.state_file} belongs to {whose}, not "
                f"{self.opts.name!r}: give each client its own --state folder, or delete the "
                "file to start this client's state from zero"
            )
        held = "; ".join(
            f"client {cid}, versions of rounds {', '.join(map(str, loaded.rounds(cid)))}"
            for cid in loaded.client_ids()
        )
        self._say(
            f"loaded client state from {self.state_file}: {held} ({loaded.nbytes:,} bytes, "
            f"run {owner.get('run_id', '?')})"
        )

    def _check_state_owner(self, run_id: str, client_id: int) -> None:
        """Refuse a state file of another run, or one that holds another client id's state:
        its state would not fit this run (and the server's id for a name is stable within a
        run, so a different id means the file is not this client's)."""
        if len(self.states) == 0:
            return
        file_run = self._file_owner.get("run_id")
        if file_run is not None and file_run != run_id:
            raise DeploymentError(
                f"the client state file {self.state_file} belongs to run {file_run}, but the "
                f"server runs {run_id}: use a new --state folder for a new run, or delete the "
                "file to start this client's state from zero"
            )
        others = [cid for cid in self.states.client_ids() if cid != client_id]
        if others:
            raise DeploymentError(
                f"the client state file {self.state_file} holds the state of client id(s) "
                f"{others}, but the server knows {self.opts.name!r} as client {client_id}: "
                "give each client its own --state folder, or delete the file to start this "
                "client's state from zero"
            )

    def _save_state(self) -> None:
        """Write the whole store to the state file, before the result that changed it is
        uploaded. A write that fails stops the client: uploading anyway would let the server
        aggregate an update whose state a restart would lose."""
        if self.state_file is None:
            return
        owner = {"run_id": self.run_id, "client_name": self.opts.name}
        try:
            self.states.save(self.state_file, metadata=owner)
        except OSError as exc:
            raise DeploymentError(
                f"cannot write the client state file {self.state_file} ({exc}); free space or "
                "fix permissions in the --state folder, then start the client again"
            ) from exc
        self._file_owner = owner
        log.debug("client state written to %s (%d bytes)", self.state_file, self.states.nbytes)

    def _say(self, message: str) -> None:
        if not self.opts.quiet:
            print(f"[{self.opts.name}] {message}", flush=True)

    def run(self) -> int:
        handshake_failures = 0
        while True:
            conn = Connection(
                self.opts.server,
                bundle=self.bundle,
                max_message_bytes=int(self.opts.max_message_mb * 1024 * 1024),
            )
            try:
                return self._session(conn)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    self._say(f"refused by the server: {exc.details()}")
                    return EXIT_REFUSED
                anonymous_closed = (
                    self.bundle is not None
                    and self.bundle.cert is None
                    and "socket closed" in (exc.details() or "").lower()
                )
                if _is_handshake_failure(exc) or anonymous_closed:
                    handshake_failures += 1
                    if handshake_failures >= 3:
                        self._say(
                            "TLS handshake with the server failed: "
                            + (
                                "the server closed the connection; it requires a client "
                                f"certificate (mTLS) and there is no {self.opts.name}.crt in "
                                f"{self.opts.certs}"
                                if anonymous_closed
                                else "wrong CA, or the server does not accept this client's "
                                f"certificate ({exc.details()})"
                            )
                        )
                        return EXIT_REFUSED
                if code == grpc.StatusCode.FAILED_PRECONDITION and "protocol" in (
                    exc.details() or ""
                ):
                    self._say(f"refused by the server: {exc.details()}")
                    return EXIT_REFUSED
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    self._say("the server no longer knows this session; joining again")
                    continue
                if self.run_over.is_set():
                    self._say(
                        f"run finished (the server stopped while this client was at work); "
                        f"{self.tasks_done} tasks done"
                    )
                    return EXIT_FINISHED
                now = time.monotonic()
                since = self.unreachable_since = self.unreachable_since or now
                if now - since > self.opts.give_up_after:
                    self._say(
                        f"server {self.opts.server} unreachable for {now - since:.0f}"
                        f" s; giving up ({code.name}: {exc.details()})"
                    )
                    return EXIT_UNREACHABLE
                wait = self.backoff.next()
                log.info(
                    "server unreachable (%s: %s); retrying in %.1f s",
                    code.name,
                    exc.details(),
                    wait,
                )
                time.sleep(wait)
            finally:
                conn.close()

    def _session(self, conn: Connection) -> int:
        joined = conn.join(self.opts.name, self.token, stage_kinds())
        self.backoff.reset()
        self.unreachable_since = None
        cfg = Config.model_validate_json(joined.config_json)
        try:
            self._check_state_owner(joined.run_id, joined.client_id)
        except DeploymentError:
            _leave(conn)
            raise
        self.run_id = joined.run_id
        if self.client is None:
            self.client = self.factory(cfg, joined.client_id)
        n, n_test = _data_sizes(self.client)
        conn.ready(n, n_test)
        self._say(
            f"joined run {joined.run_id} as client {joined.client_id} ({n} examples); "
            "waiting for tasks"
        )
        stop = threading.Event()
        beat = threading.Thread(
            target=_heartbeat,
            args=(conn, joined.heartbeat_seconds, stop, self.run_over),
            daemon=True,
        )
        beat.start()
        try:
            while True:
                reply = conn.poll(joined.poll_seconds)
                outcome = reply.WhichOneof("outcome")
                if outcome == "finished":
                    self._say(f"run finished; {self.tasks_done} tasks done")
                    return EXIT_FINISHED
                if outcome != "task":
                    continue
                try:
                    self._run_task(conn, reply.task, joined.chunk_bytes)
                except DeploymentError:  # the state file cannot be written
                    _leave(conn)  # the server stops waiting for this client's task at once
                    raise
        finally:
            stop.set()

    def _run_task(self, conn: Connection, msg: pb.TaskProto, chunk_bytes: int) -> None:
        # Enough of the task to report it failed if the message cannot be read.
        task = Task(msg.kind, msg.round, msg.client_id)
        try:
            task = task_from_proto(msg)
            blobs = conn.fetch_blobs(msg, self.cache)
        except ValueError as exc:  # a malformed task, a blob that fails its hash
            result = error_result(task, exc)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            self._say(f"round {task.round} {task.kind} skipped: {exc.details()}")
            return
        else:
            result = self._execute(task, blobs)
            self._hold_model(task, blobs)
        what = f"round {task.round} {task.kind}"
        if self.run_over.is_set():
            self._say(f"{what} not uploaded: the run finished while this client was at work")
            return
        reply = conn.upload(msg, result, chunk_bytes)
        self.tasks_done += 1
        if not result.ok:
            self._say(f"{what} failed locally: {result.error}")
        elif reply.accepted:
            note = f" ({reply.reason})" if reply.reason else ""
            self._say(f"{what} done in {result.seconds:.2f} s{note}")
        else:
            self._say(f"{what}: the server did not accept the result: {reply.reason}")

    def _hold_model(self, task: Task, blobs: Blobs) -> None:
        """Keep the model this task decoded to as a float32 blob: a server that sends deltas
        (``transport.download_delta``) names it as the next task's ``BASE``, and the cache then
        has it. A dense float32 model already is that blob."""
        model = blobs.get(task.blobs.get(MODEL, ""))
        if model is None or (model.codec.name == "float32" and model.mask is model.base is None):
            return
        try:
            vec = self._decoded.vector(model, blobs)
        except ValueError:
            return  # the task itself failed on it and said why
        self.cache.hold(Blob.held(model.spec, vec))

    def _execute(self, task: Task, blobs: Blobs) -> Result:
        """Run the task from this client's state before the task's round; keep the state it
        leaves (the Result sent to the server carries none)."""
        assert self.client is not None
        digests = frozenset(blobs)
        if digests != self._decoded_for:
            self._decoded.clear()
            self._decoded_for = digests
        before = self.states.get(task.client_id, state_round(task))
        result = execute_task(
            self.client, task, blobs, before, self._decoded, noise_secret=self._noise_secret
        )
        # Only a task that changed the state writes a version: a stage that starts from the
        # state before the round must not store it back under the same round and undo what the
        # round's fit left.
        if result.ok and result.state is not None and _changed(before, result.state):
            self.states.put(task.client_id, task.round, result.state)
            self._save_state()
        result.state = None
        return result


def _changed(before: State, after: State) -> bool:
    return before.keys() != after.keys() or any(
        after[k] is not before[k] and not np.array_equal(after[k], before[k]) for k in after
    )


def _leave(conn: Connection) -> None:
    """Tell the server this client is gone before it stops on an error (best effort)."""
    with contextlib.suppress(grpc.RpcError):
        conn.leave()


def _heartbeat(
    conn: Connection, every: float, stop: threading.Event, run_over: threading.Event
) -> None:
    while not stop.wait(every):
        try:
            if not conn.heartbeat():
                run_over.set()
                return
        except grpc.RpcError:
            pass  # the main loop notices a lost server on its next call
