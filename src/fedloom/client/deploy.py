"""``fedloom client``: one participant of a real deployment, with its own local data.

The client connects out to the server (so it works behind NAT), joins, and long-polls for tasks.
At Join it advertises the task kinds it has stage handlers for (``fit``, ``evaluate``, and any stage
the ``--app`` module registered when it was imported). For each task it takes the blobs the task
names (the model, a control variate) from its content-hash cache, downloading the others in chunks,
runs the same ``execute_task`` as every in-process engine, and uploads the result in chunks. A
heartbeat thread keeps the session alive during local training.

The client's state (error-feedback residuals, SCAFFOLD's control variate) lives in this process,
in a ``ClientStateStore`` that keeps the version before the newest: a round the server runs again
(it retried the round, or resumed after a crash) starts from the state it first started from. The
state is never uploaded, and is lost when the process exits.

When the server is unreachable the client retries with exponential backoff and full jitter, and
joins again when the server comes back (for instance after a restart from its state folder). It
exits 0 when the run finishes, 3 when the server refuses it (authentication, protocol), and 4
when the server stays unreachable for ``give_up_after`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from fedloom.client.base import Client
from fedloom.client.execute import STAGES, DecodedBlobs, error_result, execute_task
from fedloom.client.local import LocalTraining
from fedloom.client.state import ClientStateStore, State
from fedloom.client.torch_client import dataset_client
from fedloom.config import Config
from fedloom.core.task import Blobs, Result, Task
from fedloom.data import load_dataset
from fedloom.data.federated import LocalArrays, load_clients, local_arrays
from fedloom.errors import DeploymentError
from fedloom.models import build_model
from fedloom.plugins import call_factory, load_entry_point
from fedloom.transport.certs import Bundle, client_bundle, read_token
from fedloom.transport.client import Backoff, BlobCache, Connection
from fedloom.transport.proto import fedloom_transport_pb2 as pb
from fedloom.transport.wire import task_from_proto

log = logging.getLogger("fedloom.client")

ClientFactory = Callable[[Config, int], Client]
"""Builds the local ``Client`` from the run's config and the id the server gave this client."""

EXIT_FINISHED, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 3, 4


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


def demo_factory(dataset: str, index: int, count: int) -> ClientFactory:
    """Partition ``index`` of ``count`` of a built-in dataset, split exactly as a simulation of
    the run's config splits it (same seed, partition kind and test split)."""
    if not 0 <= index < count:
        raise DeploymentError(f"--partition {index}/{count}: the index must be in 0..{count - 1}")

    def build(cfg: Config, client_id: int) -> Client:
        if cfg.dataset.name != dataset:
            raise DeploymentError(f"--dataset {dataset} but the run trains on {cfg.dataset.name!r}")
        part = cfg.partition.model_copy(update={"num_clients": count})
        run = cfg.model_copy(update={"partition": part})
        data, clients = load_clients(run)
        if index >= len(clients):
            raise DeploymentError(f"--partition {index}/{count}: the run has {len(clients)}")
        model = build_model(
            cfg.model.name, data.input_shape, data.num_classes, hidden=cfg.model.hidden
        )
        return dataset_client(
            model,
            data,
            local_arrays(data, clients[index]),
            client_id=index,
            seed=cfg.seed,
            training=LocalTraining.from_config(cfg.client),
        )

    return build


def csv_factory(path: str, target: str) -> ClientFactory:
    """A TorchClient on the rows of a local CSV file, with the run's model."""

    def build(cfg: Config, client_id: int) -> Client:
        ds = load_dataset(
            "csv", path=path, target=target, test_fraction=cfg.dataset.test_fraction, seed=cfg.seed
        )
        model = build_model(cfg.model.name, ds.input_shape, ds.num_classes, hidden=cfg.model.hidden)
        local = LocalArrays(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
        return dataset_client(
            model,
            ds,
            local,
            client_id=client_id,
            seed=cfg.seed,
            training=LocalTraining.from_config(cfg.client),
        )

    return build


def app_factory(entry_point: str) -> ClientFactory:
    """``module:function`` returning the user's own Client; the function may take the run's
    Config as its one argument.

    The module is imported here, before the client joins, so the stages it registers
    (``register_stage``) are among the task kinds the client advertises.
    """
    fn = load_entry_point(entry_point, "--app")

    def build(cfg: Config, client_id: int) -> Client:
        client = call_factory(fn, cfg, "--app", entry_point)
        if not isinstance(client, Client):
            raise DeploymentError(
                f"--app {entry_point} returned {type(client).__name__}, which has no fit and "
                "evaluate methods"
            )
        return client

    return build


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
        # Decoded once per task's set of blobs (a fit and the evaluation after it share the model).
        self._decoded = DecodedBlobs()
        self._decoded_for: frozenset[str] = frozenset()
        self.backoff = Backoff()
        self.tasks_done = 0
        self.unreachable_since: float | None = None
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
        joined = conn.join(self.opts.name, self.token, sorted(STAGES))
        self.backoff.reset()
        self.unreachable_since = None
        cfg = Config.model_validate_json(joined.config_json)
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
            target=_heartbeat, args=(conn, joined.heartbeat_seconds, stop), daemon=True
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
                self._run_task(conn, reply.task, joined.chunk_bytes)
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
        reply = conn.upload(msg, result, chunk_bytes)
        self.tasks_done += 1
        what = f"round {task.round} {task.kind}"
        if not result.ok:
            self._say(f"{what} failed locally: {result.error}")
        elif reply.accepted:
            note = f" ({reply.reason})" if reply.reason else ""
            self._say(f"{what} done in {result.seconds:.2f} s{note}")
        else:
            self._say(f"{what}: the server did not accept the result: {reply.reason}")

    def _execute(self, task: Task, blobs: Blobs) -> Result:
        """Run the task from this client's state before the task's round; keep the state it
        leaves (the Result sent to the server carries none)."""
        assert self.client is not None
        digests = frozenset(blobs)
        if digests != self._decoded_for:
            self._decoded.clear()
            self._decoded_for = digests
        before = self.states.get(task.client_id, task.round)
        result = execute_task(self.client, task, blobs, before, self._decoded)
        # Only a task that changed the state writes a version: an evaluation after the round's
        # fit starts from the state before the round, and storing that back under the same round
        # would undo what the fit left.
        if result.ok and result.state is not None and _changed(before, result.state):
            self.states.put(task.client_id, task.round, result.state)
        result.state = None
        return result


def _changed(before: State, after: State) -> bool:
    return before.keys() != after.keys() or any(
        after[k] is not before[k] and not np.array_equal(after[k], before[k]) for k in after
    )


def _heartbeat(conn: Connection, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            if not conn.heartbeat():
                return
        except grpc.RpcError:
            pass  # the main loop notices a lost server on its next call
