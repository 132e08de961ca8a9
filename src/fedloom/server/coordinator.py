"""The coordinator's round loop, independent of how clients execute.

select -> stages (each: send tasks + blobs -> engine runs clients -> validate -> stream to the
strategy) -> aggregate -> server transforms -> pseudo-gradient -> server optimiser -> evaluate
-> record

The strategy plans the round as a generator of exchanges (``Strategy.fit_round``); the coordinator
runs each exchange through the engine, validates every upload against what its task asked for,
and streams the valid ones back to the strategy. Everything the server keeps between rounds (the
model, the server optimiser's state, the strategy's state) is in ``checkpoint()``.

Each round's record carries ``phase_seconds``, the wall time of the round split by what the
coordinator was doing (``PHASES``): planning the exchanges (``selection``), encoding the blobs
sent down (``download``), waiting on the engine (``client_work``), decoding and validating uploads
(``upload``), streaming them into the aggregate and stepping the server optimiser
(``aggregation``), and evaluating (``evaluation``). What the engine does on the other side (a
client decoding its blobs, training, encoding its upload, and in a deployment the network) is all
``client_work``: the coordinator only sees when results arrive.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedloom.core.codec import Codec, Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import (
    BASE,
    FIT,
    MASK,
    MESSAGE,
    MODEL,
    Blob,
    Result,
    Task,
    blob_table,
    scatter,
)
from fedloom.core.validation import (
    bound_norm,
    check_count,
    check_upload,
    describe_dropped,
    plausible_metrics,
    update_norm,
)
from fedloom.engines.base import Asynchronous, Engine, MeasuresTransfer, OverSelects, Transfer
from fedloom.errors import ConfigError, UpdateRejected
from fedloom.metrics import pooled_metrics
from fedloom.optim import OptState
from fedloom.server.pruning import MASK_STATE, PruningSchedule, mask_for_round, sparsity_of
from fedloom.strategies.base import Exchange, RoundContext, RoundPlan, Strategy, StrategyState
from fedloom.strategies.channel import Channel, Plain
from fedloom.transforms import apply_to_rows, build_pipeline

log = logging.getLogger("fedloom")

CentralEvaluator = Callable[[Params], dict[str, Any]]

PHASES = ("selection", "download", "client_work", "upload", "aggregation", "evaluation")
"""The keys of a round record's ``phase_seconds``, in the order a round runs them."""


class RoundListener(Protocol):
    """Observes the run: progress bars, recorders, trackers."""

    def on_round_start(self, round_num: int, num_clients: int) -> None: ...

    def on_result(self, result: Result) -> None: ...

    def on_round_end(self, record: dict[str, Any]) -> None: ...


@runtime_checkable
class ReportsRound(Protocol):
    """An engine with facts of its own for each round's record (the virtual clock's simulated
    time, ``fedloom.server.clock``)."""

    def round_metrics(self) -> dict[str, float]: ...


@dataclass
class Population:
    """The clients a simulation or deployment knows, with their training-set sizes."""

    num_examples: dict[int, int]
    has_test_data: set[int] = field(default_factory=set)

    @property
    def eligible(self) -> list[int]:
        """Clients with data; the others are skipped and reported."""
        return sorted(c for c, n in self.num_examples.items() if n > 0)

    @property
    def skipped(self) -> list[int]:
        return sorted(c for c, n in self.num_examples.items() if n <= 0)


@dataclass
class _Tally:
    """What one round's exchanges returned, for its record."""

    selected: int = 0
    returned: int = 0
    rejected: int = 0
    failed: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    train_loss: float = 0.0
    train_weight: int = 0
    payload_up: int = 0  # bytes of the uploads received
    dense_up: int = 0  # what they would take as float32
    phase_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time the ``with`` block takes to phase ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] += time.perf_counter() - start

    norms: list[tuple[int, float]] = field(default_factory=list)  # (client, update norm) used

    def suspects(self, n: int = 3) -> str:
        """The clients whose updates were the longest, to name when the new model is broken."""
        top = sorted(self.norms, key=lambda cn: -cn[1])[:n]
        return ", ".join(f"client {cid} (norm {norm:.4g})" for cid, norm in top) or "none"


@dataclass
class Coordinator:
    strategy: Strategy
    engine: Engine
    spec: ParamSpec
    params: np.ndarray
    population: Population
    seed: int = 0
    codec: Codec = field(default_factory=Float32Codec)
    central_eval: CentralEvaluator | None = None
    eval_every: int = 1
    federated_eval: bool = False
    max_update_bytes: int | None = None
    listeners: Sequence[RoundListener] = ()
    server_transforms: Sequence[dict[str, Any]] = ()
    upload_codec: Codec | None = None
    error_feedback: bool = False
    pruning: PruningSchedule | None = None
    download_delta: bool = False
    held_models: int = 8
    channel: Channel = field(default_factory=Plain)
    """How the strategy's uploads are aggregated: ``Plain`` or ``Secure`` (SecAgg+)."""
    opt_state: OptState = field(init=False)
    strategy_state: StrategyState = field(init=False)
    history: list[dict[str, Any]] = field(default_factory=list, init=False)
    # The pruning mask each client last received: a client keeps blobs in its content-hash cache,
    # so a mask is counted once per client in the bytes of an engine that does not measure them.
    _mask_sent: dict[int, str] = field(default_factory=dict, init=False, repr=False)
    # With download_delta: the model each client holds (by the digest of its float32 blob), and the
    # latest ``held_models`` of those models, which the next deltas are taken against.
    _held: dict[int, str] = field(default_factory=dict, init=False, repr=False)
    _bases: OrderedDict[str, Blob] = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.params = np.ascontiguousarray(self.params, dtype=np.float32)
        self.opt_state = self.strategy.server_optimizer.init(self.params)
        try:  # a model or population the strategy cannot run on (unknown personal layers)
            self.strategy.check(self.spec, len(self.population.eligible) or None)
            refusal = self.channel.refusal(self.strategy.individual_reason())
            if refusal is not None:
                raise ConfigError(refusal)
        except ConfigError:
            self.engine.close()  # nobody else holds it yet (a Ray engine started a cluster)
            raise
        self.strategy_state = self.strategy.init_state(self.params)
        if self.server_transforms and build_pipeline(self.server_transforms).draws:
            # a bad pipeline fails here, not in round 1
            raise ConfigError(
                "server transforms cannot draw noise; noise on the aggregate is "
                "privacy.mechanism=central's job"
            )
        if self.population.skipped:
            log.warning(
                "%d clients have no training data and are skipped: %s",
                len(self.population.skipped),
                _preview(self.population.skipped),
            )

    @property
    def global_params(self) -> Params:
        return self.spec.unflatten(self.params)

    # -- state ---------------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, np.ndarray]:
        """Everything the server keeps between rounds, as named arrays (safetensors-ready):
        ``params``, ``opt.<name>`` and ``strategy.<name>``."""
        out = {"params": self.params}
        out.update({f"opt.{k}": np.asarray(v) for k, v in self.opt_state.items()})
        out.update({f"strategy.{k}": np.asarray(v) for k, v in self.strategy_state.items()})
        return out

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Load what ``checkpoint`` returned (a resumed run)."""
        if "params" not in arrays or arrays["params"].shape != self.params.shape:
            raise ValueError("the checkpoint does not hold this model's params")
        self.params = np.ascontiguousarray(arrays["params"], dtype=np.float32)
        self.opt_state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}
        self.strategy_state = {k[9:]: v for k, v in arrays.items() if k.startswith("strategy.")}

    # -- rounds --------------------------------------------------------------------------------

    def run(self, rounds: int, start_round: int = 1) -> list[dict[str, Any]]:
        for r in range(start_round, rounds + 1):
            reason = self.stop_reason()
            if reason is not None:
                log.warning("stopping before round %d: %s", r, reason)
                break
            evaluate = r % self.eval_every == 0 or r == rounds
            record = self.attempt_round(r, evaluate=evaluate)
            if not evaluate:
                self.evaluate_if_final(r, record)
            self.commit(record)
        return self.history

    def evaluate_if_final(self, r: int, record: dict[str, Any]) -> None:
        """Evaluate into ``record`` when no round may follow round ``r`` (a spent budget): its
        model is the run's final one."""
        if record.get("status") == "ok" and self.stop_reason() is not None:
            metrics, sent = self.evaluate(r)
            record.update(metrics)
            record["bytes_down"] += sent

    def stop_reason(self) -> str | None:
        """Why no further round may run (the strategy's privacy budget is spent), or None."""
        return self.strategy.stop_reason(self.strategy_state, len(self.population.eligible))

    def run_round(self, r: int, evaluate: bool = True) -> dict[str, Any]:
        """Run round ``r`` and record it in ``history`` (and tell the listeners)."""
        return self.commit(self.attempt_round(r, evaluate))

    def commit(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append a round's record to ``history`` and tell the listeners."""
        self.history.append(record)
        for listener in self.listeners:
            listener.on_round_end(record)
        return record

    def attempt_round(self, r: int, evaluate: bool = True) -> dict[str, Any]:
        """Run round ``r`` without recording it: the model and server state change only when
        the round succeeds (``status: ok``); a failed attempt can be retried as the same round."""
        start = time.perf_counter()
        tally = _Tally()
        with tally.phase("download"):  # the context encodes the model (under its pruning mask)
            ctx = self._context(r, np.random.default_rng([self.seed, r]))
        plan = self.strategy.fit_round(ctx)
        aggregate: np.ndarray | None = None
        try:
            exchange = self._plan_step(plan, ctx, tally, first=True)
            while True:
                self._exchange(r, exchange, tally, ctx, first=tally.selected == 0)
                exchange = self._plan_step(plan, ctx, tally, first=False)
        except StopIteration as done:
            aggregate = done.value

        record: dict[str, Any] = {
            "round": r,
            "selected": tally.selected,
            "returned": tally.returned,
            "rejected": tally.rejected,
            "failed": tally.failed,
            "bytes_down": tally.bytes_down,
            "bytes_up": tally.bytes_up,
        }
        if isinstance(self.engine, ReportsRound):
            record.update(self.engine.round_metrics())
        if aggregate is not None:
            with tally.phase("aggregation"):
                params = self._step(r, aggregate, ctx, tally)
        else:
            params = None
        record.update(ctx.diagnostics)
        if params is not None:
            self.params, self.opt_state = params
            self.strategy_state = ctx.state
            record.update(ctx.metrics)
            record["status"] = "ok"
        else:
            record["status"] = "failed"
            log.error("round %d failed: the global model and server state are unchanged", r)
        if tally.train_weight:
            record["train_loss"] = tally.train_loss / tally.train_weight
        if self.pruning is not None:
            support = ctx.support
            record["sparsity"] = 0.0 if support is None else sparsity_of(support, self.spec)
        if tally.payload_up:
            # float32 bytes over the bytes sent: how much the upload codec saved this round
            record["compression_ratio_up"] = tally.dense_up / tally.payload_up
        if evaluate:
            with tally.phase("evaluation"):
                metrics, eval_bytes = self.evaluate(r)
            record.update(metrics)
            record["bytes_down"] += eval_bytes
        record["phase_seconds"] = dict(tally.phase_seconds)
        record["seconds"] = time.perf_counter() - start
        return record

    @staticmethod
    def _plan_step(plan: RoundPlan, ctx: RoundContext, tally: _Tally, first: bool) -> Exchange:
        """The plan's next exchange. Planning is ``selection`` time, except the blobs the strategy
        encodes (``download``) and the step that ends the plan by finishing the aggregate
        (``aggregation``); that step raises ``StopIteration`` with the aggregate."""
        start, encoded = time.perf_counter(), ctx.encode_seconds
        phase = "selection"
        try:
            return next(plan) if first else plan.send(None)
        except StopIteration:
            phase = "aggregation"
            raise
        finally:
            blobs = ctx.encode_seconds - encoded
            tally.phase_seconds["download"] += blobs
            tally.phase_seconds[phase] += time.perf_counter() - start - blobs

    def _step(
        self, r: int, aggregate: np.ndarray, ctx: RoundContext, tally: _Tally
    ) -> tuple[np.ndarray, OptState] | None:
        """The new model and optimiser state, or None when they are not finite: a model with
        NaN or inf in it is never applied or checkpointed, and the longest updates are named."""
        # the server pipeline's state lives in the strategy state, like a client's in its own
        aggregate = apply_to_rows(
            self.server_transforms, aggregate[None, :], [ctx.state], {"round": r}
        )[0].astype(np.float32, copy=False)
        pseudo_grad = self.strategy.pseudo_gradient(aggregate, ctx)
        with np.errstate(over="ignore", invalid="ignore"):
            params, opt_state = self.strategy.server_optimizer.step(
                self.params, pseudo_grad, self.opt_state
            )
            params = params.astype(np.float32, copy=False)
        if ctx.support is not None:
            params = params * ctx.support  # pruned weights stay zero, whatever the optimiser
        broken = [n for n, v in {"params": params, **opt_state}.items() if not np.isfinite(v).all()]
        if broken:
            log.error(
                "round %d: the new %s would not be finite (NaN or inf); refused. Suspect updates, "
                "longest first: %s (bound them with strategy.max_update_norm)",
                r,
                " and ".join(broken),
                tally.suspects(),
            )
            return None
        return params, opt_state

    def _context(
        self,
        r: int,
        rng: np.random.Generator,
        eligible: Sequence[int] | None = None,
    ) -> RoundContext:
        """The context of a fit round (the strategy state is a copy the round may change) or, with
        ``eligible``, of federated evaluation (which only reads it)."""
        state = dict(self.strategy_state)
        support = None
        if eligible is None:
            # The strategy works on a copy: a failed round leaves the server state as it was.
            state = {k: v.copy() for k, v in state.items()}
            if self.pruning is not None:
                support = mask_for_round(self.pruning, r, self.params, self.spec, state)
        elif MASK_STATE in state:
            support = state[MASK_STATE] > 0.5
        params, mask = self.params, None
        if support is not None:
            params = (self.params * support).astype(np.float32)
            mask = Blob.mask_of(self.spec, support)
        return RoundContext(
            round=r,
            eligible=self.population.eligible if eligible is None else eligible,
            rng=rng,
            seed=self.seed,
            spec=self.spec,
            codec=self.codec,
            params=params,
            model=Blob.encode(self.spec, self.codec, params, mask),
            state=state,
            num_clients=len(self.population.eligible),
            num_examples=self.population.num_examples,
            in_flight=(
                tuple(self.engine.in_flight()) if isinstance(self.engine, Asynchronous) else ()
            ),
            upload_codec=self.upload_codec,
            error_feedback=self.error_feedback,
            mask=mask,
            support=support,
            channel=self.channel,
        )

    def _exchange(
        self, r: int, exchange: Exchange, tally: _Tally, ctx: RoundContext, first: bool
    ) -> None:
        if not self.channel.reveals_updates:
            clear = [
                t for t in exchange.tasks if t.upload is not None and t.upload.codec != MESSAGE
            ]
            if clear:
                # a strategy that yields its own exchanges past the channel: refused, never run
                # in the clear
                raise ConfigError(
                    f"secure_aggregation.enabled: strategy {self.strategy.name!r} asked "
                    f"{len(clear)} clients for uploads in the clear ({clear[0].kind} tasks), "
                    "which secure aggregation forbids: a strategy reaches its uploads through "
                    "ctx.channel (sums, or individual updates where the channel allows them)"
                )
        with tally.phase("download"):  # deltas against what each client holds are encoded here
            tasks, blobs = self._prepare(exchange.tasks, blob_table(*exchange.blobs), ctx)
        if first:
            for listener in self.listeners:
                listener.on_round_start(r, len(tasks))
        tally.selected += len(tasks)
        if isinstance(self.engine, OverSelects):
            # Extra clients may stand in for stragglers of a round's first stage only: a later
            # stage must reach exactly the clients that took part in the stages before it.
            self.engine.allow_over_selection(first)
        bytes_up = 0
        if exchange.until is None:
            results = iter(self.engine.run(tasks, blobs))
        elif isinstance(self.engine, Asynchronous):
            self.engine.start(tasks, blobs)
            results = iter(self.engine.arrivals(exchange.until))
        else:
            raise ConfigError(
                f"strategy {self.strategy.name!r} runs without a round barrier: its tasks stay in "
                "flight across rounds, which needs an asynchronous engine (fedloom server's, or "
                "the virtual clock's in a simulation with clients.enabled); "
                f"the {self.engine.name!r} engine runs each exchange to its end"
            )
        while True:
            with tally.phase("client_work"):
                result = next(results, None)
            if result is None:
                break
            for listener in self.listeners:
                listener.on_result(result)
            exchange.ended.append(result.task)
            cid = result.task.client_id
            if result.rejected is not None:
                tally.rejected += 1  # the receiver (the gRPC service) logged it with the reason
                continue
            if not result.ok:
                tally.failed += 1
                log.warning("round %d: client %d failed: %s", r, cid, result.error)
                continue
            bytes_up += len(result.payload or b"")
            upload = result.task.upload
            if result.payload is not None and upload is not None and upload.codec != MESSAGE:
                tally.payload_up += len(result.payload)
                tally.dense_up += 4 * _dense_values(upload.size, ctx)
            try:
                with tally.phase("upload"):
                    result, vec = self._validate(r, result, ctx)
            except UpdateRejected as exc:
                tally.rejected += 1
                log.warning("round %d: update of client %d rejected: %s", r, cid, exc)
                continue
            if vec is not None:
                tally.norms.append((cid, update_norm(vec)))
            try:
                with tally.phase("aggregation"):
                    exchange.on_result(result, vec)
            except UpdateRejected as exc:  # the stage refused it (a message that breaks a protocol)
                tally.rejected += 1
                log.warning("round %d: result of client %d rejected: %s", r, cid, exc)
                continue
            tally.returned += 1
            metrics, dropped = plausible_metrics(result.metrics)
            if dropped:
                log.warning("round %d: client %d: left out %s", r, cid, describe_dropped(dropped))
            loss = metrics.get("train_loss")
            if loss is not None:
                tally.train_loss += loss * result.num_examples
                tally.train_weight += result.num_examples
        transfer = self._transfer(Transfer(self._sent(tasks, blobs), bytes_up))
        tally.bytes_down += transfer.bytes_down
        tally.bytes_up += transfer.bytes_up
        if isinstance(self.engine, Asynchronous):
            exchange.in_flight = self.engine.in_flight()
            if exchange.until is not None:  # on virtual time it moved the clock: who is online
                ctx.eligible = self.population.eligible

    def _validate(
        self, r: int, result: Result, ctx: RoundContext
    ) -> tuple[Result, np.ndarray | None]:
        """The result as it may be used, and its decoded upload; ``UpdateRejected`` if neither.

        A fit result weighs at most the examples its client declared (``Population``), so a
        client cannot buy the aggregate by claiming more; its update is bounded by
        ``strategy.max_update_norm``.
        """
        if result.task.upload is None:
            check_count(result.num_examples)
            return result, None
        vec = check_upload(result, self.max_update_bytes)
        if vec is None:  # a protocol message: the stage that asked for it reads it
            return result, None
        upload = result.task.upload
        if upload.mask is not None:
            if ctx.mask is None or ctx.support is None or upload.mask != ctx.mask.digest:
                raise UpdateRejected("the upload is sparse under a mask this round did not send")
            vec = scatter(vec, ctx.support)
        declared = self.population.num_examples.get(result.task.client_id)
        if result.task.kind == FIT and declared is not None and result.num_examples > declared:
            log.warning(
                "round %d: client %d claims %d examples, it declared %d; weighted as %d",
                r,
                result.task.client_id,
                result.num_examples,
                declared,
                declared,
            )
            result = replace(result, num_examples=declared)
        s = self.strategy
        return result, bound_norm(vec, s.max_update_norm, s.max_update_norm_action)

    def _prepare(
        self, tasks: list[Task], blobs: dict[str, Blob], ctx: RoundContext
    ) -> tuple[list[Task], dict[str, Blob]]:
        """The tasks as they go out: naming the pruning mask, and, with ``download_delta``, the
        model as a delta against the one each client holds."""
        tasks, blobs = _with_mask(tasks, blobs, ctx.mask)
        if not self.download_delta:
            return tasks, blobs
        out: list[Task] = []
        # by base digest: (the blob sent, the model it decodes to)
        deltas: dict[str | None, tuple[Blob, Blob]] = {}
        # every base is looked up before any client's new model is held (which may evict one)
        bases = [self._bases.get(self._held.get(task.client_id, "")) for task in tasks]
        for task, base in zip(tasks, bases, strict=True):
            if task.blobs.get(MODEL) != ctx.model.digest:
                out.append(task)
                continue
            key = None if base is None else base.digest
            if key not in deltas:
                sent = ctx.model if base is None else self._delta(ctx, base)
                table = (
                    {**blobs, sent.digest: sent}
                    if base is None
                    else {**blobs, sent.digest: sent, base.digest: base}
                )
                deltas[key] = (sent, Blob.held(self.spec, sent.decode(table)))
            sent, held = deltas[key]
            self._hold(task.client_id, held)
            if base is None:
                out.append(task)
                continue
            blobs[sent.digest], blobs[base.digest] = sent, base
            roles = {**task.blobs, MODEL: sent.digest, BASE: base.digest}
            out.append(replace(task, blobs=roles))
        return out, blobs

    def _delta(self, ctx: RoundContext, base: Blob) -> Blob:
        return Blob.encode(self.spec, self.codec, ctx.params, ctx.mask, base)

    def _hold(self, client_id: int, held: Blob) -> None:
        """Remember that ``client_id`` now holds ``held`` (the model it decodes this task's to)."""
        self._held[client_id] = held.digest
        self._bases[held.digest] = held
        self._bases.move_to_end(held.digest)
        while len(self._bases) > self.held_models:
            self._bases.popitem(last=False)

    def _sent(self, tasks: Sequence[Task], blobs: dict[str, Blob]) -> int:
        """The bytes an in-process engine's tasks move down: every blob of every task, except a
        pruning mask the client already holds and the model a delta is taken against (the
        client's own)."""
        total = 0
        for task in tasks:
            for role, digest in task.blobs.items():
                if digest not in blobs or role == BASE:
                    continue
                if role == MASK:
                    if self._mask_sent.get(task.client_id) == digest:
                        continue
                    self._mask_sent[task.client_id] = digest
                total += len(blobs[digest].payload)
        return total

    def evaluate(self, r: int) -> tuple[dict[str, Any], int]:
        """Central evaluation on the held-out set, and federated evaluation on clients' splits:
        each client metric pooled over their examples (``fed_<k>``, ``metrics.pooled_metrics``)
        and its spread over clients (``fed_<k>_<stat>``, ``metrics.fairness_summary``).

        Returns the metrics and the bytes sent down for federated evaluation.
        """
        out: dict[str, Any] = {}
        if self.central_eval is not None:
            out.update(self.central_eval(self.global_params))
        if self.federated_eval and self.population.has_test_data:
            fed, sent = self._federated_evaluate(r)
            out.update(fed)
            return out, sent
        return out, 0

    def _federated_evaluate(self, r: int) -> tuple[dict[str, Any], int]:
        rng = np.random.default_rng([self.seed, r, 1])
        # Without a round barrier (an Asynchronous engine), a client still training would run its
        # evaluation only after that: the server would wait for the slowest. Those clients are
        # left out of this evaluation, and counted.
        busy: set[int] = set()
        if isinstance(self.engine, Asynchronous):
            busy = {t.client_id for t in self.engine.in_flight()} & self.population.has_test_data
        ctx = self._context(r, rng, sorted(self.population.has_test_data - busy))
        tasks, blobs = self._prepare(
            self.strategy.configure_evaluate(ctx),
            blob_table(*self.strategy.evaluation_blobs(ctx)),
            ctx,
        )
        per_client: list[tuple[int, dict[str, float]]] = []  # (client id, metrics)
        sizes: list[tuple[int, dict[str, float]]] = []  # (test examples, metrics)
        for result in self.engine.run(tasks, blobs):
            if not result.ok:
                if result.rejected is None:  # a rejection was logged where it was received
                    log.warning(
                        "round %d: evaluation on client %d failed: %s",
                        r,
                        result.task.client_id,
                        result.error,
                    )
                continue
            kept, dropped = plausible_metrics(result.metrics)
            if dropped:
                log.warning(
                    "round %d: evaluation on client %d: left out %s",
                    r,
                    result.task.client_id,
                    describe_dropped(dropped),
                )
            per_client.append((result.task.client_id, kept))
            labels = self.strategy.label_metrics
            sizes.append((result.num_examples, {k: v for k, v in kept.items() if k not in labels}))
        # pooled over every client's test examples (fed_loss, fed_rmse); then the strategy's
        # spread over clients (fed_<metric>_<stat>)
        out: dict[str, Any] = {f"fed_{k}": v for k, v in pooled_metrics(sizes).items()}
        if busy:
            out["fed_eval_busy"] = len(busy)
        if per_client:
            out.update(self.strategy.evaluation_metrics(per_client))
        return out, self._transfer(Transfer(self._sent(tasks, blobs), 0)).bytes_down

    def _transfer(self, assumed: Transfer) -> Transfer:
        """The bytes of the engine's latest run: measured if the engine measures them, else
        ``assumed`` (what an in-process engine moves)."""
        if isinstance(self.engine, MeasuresTransfer):
            return self.engine.last_transfer()
        return assumed


def _dense_values(size: int, ctx: RoundContext) -> int:
    """How many values an upload of ``size`` stands for in the dense model (the model-sized parts
    behind an upload sparse under the round's pruning mask)."""
    if ctx.support is None:
        return size
    kept = int(ctx.support.sum())
    return size // kept * ctx.spec.size if kept else size


def _with_mask(
    tasks: list[Task], blobs: dict[str, Blob], mask: Blob | None
) -> tuple[list[Task], dict[str, Blob]]:
    """Tasks that name a blob sparse under ``mask`` also name the mask (role ``MASK``), and the
    blobs include it: a client needs it to decode them."""
    if mask is None:
        return tasks, blobs
    blobs = {**blobs, mask.digest: mask}
    out = []
    for task in tasks:
        if MASK not in task.blobs and any(
            d in blobs and blobs[d].mask == mask.digest for d in task.blobs.values()
        ):
            task = replace(task, blobs={**task.blobs, MASK: mask.digest})
        out.append(task)
    return out, blobs


def _preview(ids: Sequence[int], n: int = 10) -> str:
    head = ", ".join(str(i) for i in ids[:n])
    return head + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")
