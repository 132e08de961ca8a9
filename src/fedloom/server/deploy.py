"""``fedloom server``: the coordinator of a real deployment.

The same strategies, configs and round loop as a simulation, with the ``remote`` engine: clients
are separate processes that connect over gRPC (see ``fedloom.transport``). Around the round loop
this module adds what a long-running service needs:

- the global model comes from the config (its dataset and model sections, as ``fedloom run``
  builds it) or from the user's own ``nn.Module`` factory (``--model module:function``); with a
  factory the server loads no dataset, and central evaluation runs only on ``--eval-data``;
- the strategy comes from the config or from the user's factory (``--strategy module:function``);
- it waits for enough clients before each round (``server.min_clients``, failing the run after
  ``server.join_timeout_s``), and uses clients that join later from the next round on;
- each attempt at a round is ``Coordinator.attempt_round``, which changes the model and the
  server's state only when the round succeeds; a round with fewer than
  ``strategy.min_fit_clients`` usable updates by the deadline is retried
  ``server.round_retries`` times, then the run fails with the reason;
- after every completed round, ``Coordinator.checkpoint()`` (the model, the server optimiser's
  state and the strategy's state) and the round's record are committed to the state store
  (``fedloom.server.state``); a restarted server restores them and resumes after the last
  completed round, so a resumed run computes what an uninterrupted one would;
- it prints one progress line per round and writes the same results folder as ``fedloom run``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from fedloom.config import Config
from fedloom.core.params import ParamSpec
from fedloom.core.task import EVALUATE, Blobs, Result, Task
from fedloom.engines import Engine
from fedloom.engines.base import Transfer
from fedloom.engines.remote import RemoteEngine, RemoteRunStats
from fedloom.errors import ConfigError, DeploymentError
from fedloom.server.coordinator import Coordinator, Population, RoundListener
from fedloom.server.state import StateStore
from fedloom.tracking import RunRecorder
from fedloom.tracking.console import format_bytes
from fedloom.tracking.live import LiveFeed
from fedloom.tracking.results import METRICS_FILE, to_json_safe
from fedloom.tracking.trackers import open_trackers
from fedloom.transport.certs import ENROLMENT_KEY, REVOKED, read_enrolment_key, server_bundle
from fedloom.transport.hub import Hub
from fedloom.transport.server import FederationService, ServiceSettings, start_server

# Config sections that define a run: a --state folder only resumes a run with the same ones.
IDENTITY_SECTIONS = ("seed", "dataset", "partition", "model", "strategy", "client", "transport")
_LINE_METRICS = (
    "train_loss",
    "loss",
    "accuracy",
    "f1_macro",
    "rmse",
    "fed_rmse",
    "epsilon",
    "clip_norm",
)


@dataclass(frozen=True)
class ServerOptions:
    """How to serve a run. ``model`` and ``strategy`` are ``module:function`` factories (None: from
    the config); ``eval_data`` is an ``.npz`` with ``x`` and ``y`` for central evaluation."""

    address: str
    state: Path
    out: Path
    certs: Path | None = None
    insecure: bool = False
    quiet: bool = False
    model: str | None = None
    strategy: str | None = None
    eval_data: Path | None = None
    live: LiveFeed | None = None  # a dashboard's live feed (``--dashboard``)
    new_run: bool = False  # start a new run where checkpoints or metrics of no recorded run lie


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, flush=True)


def progress_line(record: dict[str, Any], rounds: int, stats: dict[str, int]) -> str:
    """One line per round: who took part, what came back, metrics and bytes."""
    parts = [
        f"round {record['round']}/{rounds}",
        f"selected {record['selected']}",
        f"returned {record['returned']}",
        f"rejected {record['rejected']}",
        f"failed {stats.get('failed', 0)}",
        f"dropped {stats.get('dropped', 0)}",
    ]
    parts += [f"{k} {record[k]:.4f}" for k in _LINE_METRICS if isinstance(record.get(k), float)]
    parts += [
        f"up {format_bytes(record['bytes_up'])}",
        f"down {format_bytes(record['bytes_down'])}",
    ]
    parts.append(f"{record['seconds']:.1f} s")
    if record.get("status") != "ok":
        parts.append(f"status {record.get('status')}")
    return " | ".join(parts)


def _write_history(recorder: RunRecorder, history: list[dict[str, Any]]) -> None:
    """Make metrics.jsonl hold exactly the completed rounds: after a crash it may hold a round
    the state store never committed. Written to a temporary file and renamed into place."""
    path = recorder.metrics_path
    tmp = path.with_name(METRICS_FILE + ".tmp")
    lines = (json.dumps(to_json_safe(r), allow_nan=False) + "\n" for r in history)
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class ServerSide(Protocol):
    """What the server runs: the server side of a federation (``fedloom.app.Federation`` as
    ``fedloom.app.user_code.server_federation`` builds it: the model, the strategy, central
    evaluation, and no clients, which join over the network)."""

    @property
    def spec(self) -> ParamSpec: ...

    @property
    def source(self) -> str: ...

    @property
    def eval_source(self) -> str: ...

    def coordinator(
        self, listeners: Sequence[RoundListener] = (), *, engine: Engine | None = None
    ) -> Coordinator: ...

    def summary(
        self,
        history: list[dict[str, Any]],
        wall_seconds: float,
        out: Path,
        *,
        num_clients: int | None = None,
    ) -> dict[str, Any]: ...


def serve(cfg: Config, opts: ServerOptions, build: Callable[[], ServerSide]) -> dict[str, Any]:
    """Run the deployment ``cfg`` to its last round; returns the summary. Raises
    ``DeploymentError`` (or ``ConfigError``) with the reason when the run cannot finish.

    ``build()`` builds the server side of the federation, once the TLS settings are checked;
    its coordinator comes from the same ``make_coordinator`` as a simulation's, on the remote
    engine."""
    start = time.perf_counter()
    s = cfg.server
    if opts.insecure:
        print(
            "WARNING: --insecure: plaintext gRPC. Updates, params and tokens travel unencrypted "
            "and clients are not authenticated by certificate; use only on a trusted network.",
            file=sys.stderr,
            flush=True,
        )
    elif opts.certs is None:
        raise DeploymentError(
            "--certs DIR is required: TLS is on by default (create the folder with "
            "`fedloom certs --out DIR --clients N`), or pass --insecure for plaintext"
        )
    enrolment_key = None
    wants_tokens = s.auth == "token" or opts.insecure
    if (
        opts.certs is not None
        and wants_tokens
        and (not opts.insecure or (opts.certs / ENROLMENT_KEY).exists())
    ):
        enrolment_key = read_enrolment_key(opts.certs)
    bundle = None
    if not opts.insecure:
        assert opts.certs is not None
        bundle = server_bundle(opts.certs)
    auth = "none" if opts.insecure else s.auth
    if opts.insecure and enrolment_key is None:
        print(
            "WARNING: no enrolment key (--certs DIR with enrolment.key): any client can join",
            file=sys.stderr,
            flush=True,
        )

    federation = build()
    # Closed however the run ends, so an in-process caller (a test, a benchmark) can reopen it.
    with (
        contextlib.closing(StateStore(opts.state)) as store,
        open_trackers(cfg.tracking, opts.out, cfg.model_dump(mode="json")) as trackers,
    ):
        metrics = opts.out / METRICS_FILE
        if (
            not opts.new_run
            and not store.has_run()
            and metrics.is_file()
            and metrics.stat().st_size
        ):
            raise DeploymentError(
                f"--out {str(opts.out)!r} holds the metrics of an earlier run and --state "
                f"{str(opts.state)!r} records none: a new run would overwrite them. Use a new --out "
                "folder, or pass --new-run to start a new run anyway"
            )
        info = store.open_run(cfg.model_dump_json(), run_identity(cfg, opts), opts.new_run)
        hub = Hub(store.client_id, heartbeat_timeout=s.heartbeat_timeout_s)
        engine = _CountedEngine(
            RemoteEngine(
                hub, deadline_s=s.round_deadline_s, over_selection=s.over_selection, seed=cfg.seed
            )
        )
        coordinator = federation.coordinator(trackers, engine=engine)
        if opts.live is not None:
            opts.live.clients = hub.client_table  # a read-only snapshot per dashboard update
            coordinator.listeners = [*coordinator.listeners, opts.live]
        recorder = RunRecorder(opts.out)
        if info.last_round:
            # ``needs``: a fresh checkpoint names every array this run keeps, so a checkpoint
            # without the strategy's state is refused instead of resuming from a reset state.
            # The newest intact checkpoint: a damaged newer one is skipped, its rounds run again.
            last, arrays = store.resume(needs=coordinator.checkpoint())
            info = dataclasses.replace(info, last_round=last)
            coordinator.restore(arrays)
            coordinator.history = store.history()
            _say(f"resuming run {info.run_id} after round {info.last_round}", opts.quiet)
        _write_history(recorder, coordinator.history)

        settings = ServiceSettings(
            run_id=info.run_id,
            config_json=cfg.model_dump_json(),
            auth=auth,
            enrolment_key=enrolment_key,
            heartbeat_seconds=s.heartbeat_s,
            poll_seconds=s.poll_s,
            chunk_bytes=s.chunk_kb * 1024,
            compression=s.compression,
            max_client_examples=s.max_client_examples,
            first_message_s=s.first_message_s,
            idle_stream_s=s.idle_stream_s,
            allowed_clients=None if s.allowed_clients is None else frozenset(s.allowed_clients),
            revoked_file=opts.certs / REVOKED if opts.certs is not None else None,
        )
        server, port = start_server(
            FederationService(hub, settings),
            opts.address,
            bundle=bundle,
            require_client_cert=auth == "mtls",
            max_message_bytes=int(s.max_message_mb * 1024 * 1024),
            max_workers=s.max_workers,
            max_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        host = opts.address.rsplit(":", 1)[0]
        _say(
            f"fedloom server: run {info.run_id} on {host}:{port} "
            f"({'plaintext' if opts.insecure else 'TLS, ' + auth}); "
            f"rounds {info.last_round + 1}..{cfg.rounds}; state {opts.state}",
            opts.quiet,
        )
        _say(
            f"model: {federation.source} ({federation.spec.size:,} parameters); strategy: "
            f"{opts.strategy or cfg.strategy.name}; central evaluation: {federation.eval_source}",
            opts.quiet,
        )
        stop = threading.Event()
        reaper = threading.Thread(
            target=_reap, args=(hub, stop), daemon=True, name="fedloom-reaper"
        )
        reaper.start()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
        status = "failed"
        try:
            retried = _run_rounds(
                cfg, opts, coordinator, engine, hub, store, recorder, info.last_round + 1
            )
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            store.mark(status)
            hub.finish()
            if status == "finished":
                _linger(hub)
            stop.set()
            server.stop(grace=1.0)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

        # From the history and the state store, not from a dataset: with --model there is none.
        summary = federation.summary(
            coordinator.history,
            time.perf_counter() - start,
            opts.out,
            num_clients=store.num_clients(),
        )
        summary["deployment"] = to_json_safe(
            {
                "run_id": info.run_id,
                "resumed_after_round": info.last_round,
                "retried_round_attempts": retried,
                "address": f"{host}:{port}",
                "auth": auth,
                "state": str(opts.state),
                "model": federation.source,
                "strategy": opts.strategy or cfg.strategy.name,
                "central_eval": federation.eval_source,
                "pid": os.getpid(),
                # ru_maxrss is in KiB on Linux
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        recorder.write_results(coordinator.global_params, summary, cfg.rounds)
        return summary


def _run_rounds(
    cfg: Config,
    opts: ServerOptions,
    coordinator: Coordinator,
    engine: _CountedEngine,
    hub: Hub,
    store: StateStore,
    recorder: RunRecorder,
    first: int,
) -> int:
    """Rounds ``first..cfg.rounds``, each committed (store, history, results folder) once it
    succeeds; returns how many failed attempts were retried. ``DeploymentError`` when a round
    fails every attempt, or when too few clients connect."""
    s = cfg.server
    need = max(s.min_clients, coordinator.strategy.min_fit_clients)
    retried = 0
    for r in range(first, cfg.rounds + 1):
        budget = coordinator.stop_reason()
        if budget is not None:  # a spent privacy budget: the last model within it is final
            _say(f"stopping before round {r}: {budget}", opts.quiet)
            break
        evaluate = r % cfg.eval.every == 0 or r == cfg.rounds
        for attempt in range(s.round_retries + 1):
            _wait_for_clients(hub, coordinator.population, need, s.join_timeout_s, r, opts.quiet)
            engine.new_attempt()
            try:
                # The model and server state change only if the attempt succeeds, so a failed
                # attempt is retried from exactly the state the round started in.
                record = coordinator.attempt_round(r, evaluate=evaluate)
            except ConfigError as exc:  # too few eligible clients to select from
                record = {"round": r, "status": "failed", "error": str(exc)}
            stats = engine.stats
            record.update(
                dropped=stats.dropped,
                over_selected=stats.over_selected,
                connected=len(coordinator.population.num_examples),
            )
            if record["status"] == "ok":
                if not evaluate:
                    coordinator.evaluate_if_final(r, record)
                break
            store.record_attempt(record, attempt)
            retried += 1
            _say(
                progress_line(record, cfg.rounds, vars(stats))
                + f" (attempt {attempt + 1} of {s.round_retries + 1})"
                if "selected" in record
                else f"round {r}: {record.get('error')}",
                opts.quiet,
            )
        else:
            raise DeploymentError(
                f"round {r} failed {s.round_retries + 1} times: fewer than "
                f"min_fit_clients={coordinator.strategy.min_fit_clients} usable updates by the "
                f"{s.round_deadline_s:g} s deadline; see the log above for each client's reason"
            )
        # Durable first: a crash after this line resumes after round r.
        store.commit_round(record, coordinator.checkpoint(), s.keep_checkpoints)
        coordinator.commit(record)
        recorder.log_round(record)
        _say(progress_line(record, cfg.rounds, vars(stats)), opts.quiet)
    return retried


def run_identity(cfg: Config, opts: ServerOptions) -> dict[str, Any]:
    """The config sections (and factories) that define a run: a ``--state`` folder resumes only
    a run with the same ones, because its checkpoint would not fit another model or strategy.
    Factories are added only when given, so runs without them keep the identity they had."""
    dump = cfg.model_dump(mode="json")
    identity = {k: dump[k] for k in IDENTITY_SECTIONS}
    if opts.model is not None:
        identity["model_factory"] = opts.model
    if opts.strategy is not None:
        identity["strategy_factory"] = opts.strategy
    return identity


# -- the engine's counts per round --------------------------------------------------------------


class _CountedEngine:
    """The remote engine, with its counts summed over the training exchanges of one round attempt.

    ``RemoteEngine.last_stats`` covers one ``run`` call, but a round can be several (the stages
    of a multi-stage protocol, then federated evaluation); the round's record and progress line
    report its training stages together, as the coordinator counts selected and returned.
    """

    name = "remote"

    def __init__(self, engine: RemoteEngine) -> None:
        self.engine = engine
        self.stats = RemoteRunStats()

    def new_attempt(self) -> None:
        self.stats = RemoteRunStats()

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        try:
            yield from self.engine.run(tasks, blobs)
        finally:
            if any(t.kind != EVALUATE for t in tasks):
                self._add(self.engine.last_stats)

    # asynchronous exchanges (FedBuff): training tasks only
    def start(self, tasks: Sequence[Task], blobs: Blobs) -> None:
        self.engine.start(tasks, blobs)

    def arrivals(self, most: int) -> Iterator[Result]:
        try:
            yield from self.engine.arrivals(most)
        finally:
            self._add(self.engine.last_stats)

    def in_flight(self) -> list[Task]:
        return self.engine.in_flight()

    def _add(self, last: RemoteRunStats) -> None:
        for f in dataclasses.fields(self.stats):
            setattr(self.stats, f.name, getattr(self.stats, f.name) + getattr(last, f.name))

    def allow_over_selection(self, allowed: bool) -> None:
        self.engine.allow_over_selection(allowed)

    def last_transfer(self) -> Transfer:
        return self.engine.last_transfer()

    def close(self) -> None:
        self.engine.close()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _reap(hub: Hub, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        hub.reap()


def _wait_for_clients(
    hub: Hub, population: Population, need: int, timeout: float, r: int, quiet: bool
) -> None:
    """Block until ``need`` clients with data are ready, then refresh ``population``."""
    deadline = time.monotonic() + timeout
    announced = -1
    while True:
        ready = {cid: s for cid, s in hub.ready_clients().items() if s.num_examples > 0}
        if len(ready) >= need:
            break
        if len(ready) != announced:
            _say(f"round {r}: waiting for clients: {len(ready)}/{need} connected", quiet)
            announced = len(ready)
        if time.monotonic() > deadline:
            raise DeploymentError(
                f"only {len(ready)} of the {need} clients needed (server.min_clients / "
                f"strategy.min_fit_clients) connected within server.join_timeout_s="
                f"{timeout:g} s"
            )
        time.sleep(0.1)
    population.num_examples = {cid: s.num_examples for cid, s in ready.items()}
    population.has_test_data = {cid for cid, s in ready.items() if s.num_test_examples > 0}


def _linger(hub: Hub, seconds: float = 3.0) -> None:
    """Give connected clients a moment to hear that the run finished, so they exit cleanly."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and hub.unnotified():
        time.sleep(0.05)
