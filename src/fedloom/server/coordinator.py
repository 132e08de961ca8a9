"""The coordinator's round loop, independent of how clients execute.

select -> stages (each: send tasks + blobs -> engine runs clients -> validate -> stream to the
strategy) -> aggregate -> server transforms -> pseudo-gradient -> server optimiser -> evaluate
-> record

The strategy plans the round as a generator of exchanges (``Strategy.fit_round``); the coordinator
runs each exchange through the engine, validates every upload against what its task asked for,
and streams the valid ones back to the strategy. Everything the server keeps between rounds (the
model, the server optimiser's state, the strategy's state) is in ``checkpoint()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from fedloom.core.codec import Codec, Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import FIT, Blob, Result, blob_table
from fedloom.core.validation import (
    bound_norm,
    check_count,
    decode_update,
    describe_dropped,
    plausible_metrics,
    update_norm,
)
from fedloom.engines.base import Engine, MeasuresTransfer, OverSelects, Transfer
from fedloom.errors import UpdateRejected
from fedloom.metrics import fairness_summary
from fedloom.optim import OptState
from fedloom.strategies.base import Exchange, RoundContext, Strategy, StrategyState
from fedloom.transforms import apply_to_rows, build_pipeline

log = logging.getLogger("fedloom")

CentralEvaluator = Callable[[Params], dict[str, Any]]


class RoundListener(Protocol):
    """Observes the run: progress bars, recorders, trackers."""

    def on_round_start(self, round_num: int, num_clients: int) -> None: ...

    def on_result(self, result: Result) -> None: ...

    def on_round_end(self, record: dict[str, Any]) -> None: ...


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
    opt_state: OptState = field(init=False)
    strategy_state: StrategyState = field(init=False)
    history: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.params = np.ascontiguousarray(self.params, dtype=np.float32)
        self.opt_state = self.strategy.server_optimizer.init(self.params)
        self.strategy_state = self.strategy.init_state(self.params)
        if self.server_transforms:
            build_pipeline(self.server_transforms)  # a bad pipeline fails here, not in round 1
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
            self.run_round(r, evaluate=r % self.eval_every == 0 or r == rounds)
        return self.history

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
        ctx = self._context(r, np.random.default_rng([self.seed, r]))
        plan = self.strategy.fit_round(ctx)
        tally = _Tally()
        aggregate: np.ndarray | None = None
        try:
            exchange = next(plan)
            while True:
                self._exchange(r, exchange, tally, first=tally.selected == 0)
                exchange = plan.send(None)
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
        params = None if aggregate is None else self._step(r, aggregate, ctx, tally)
        if params is not None:
            self.params, self.opt_state = params
            self.strategy_state = ctx.state
            record["status"] = "ok"
        else:
            record["status"] = "failed"
            log.error("round %d failed: the global model and server state are unchanged", r)
        if tally.train_weight:
            record["train_loss"] = tally.train_loss / tally.train_weight
        if tally.payload_up:
            # float32 bytes over the bytes sent: how much the upload codec saved this round
            record["compression_ratio_up"] = tally.dense_up / tally.payload_up
        if evaluate:
            metrics, eval_bytes = self.evaluate(r)
            record.update(metrics)
            record["bytes_down"] += eval_bytes
        record["seconds"] = time.perf_counter() - start
        return record

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
        self, r: int, rng: np.random.Generator, eligible: Sequence[int] | None = None
    ) -> RoundContext:
        """The context of a fit round (the strategy state is a copy the round may change) or, with
        ``eligible``, of federated evaluation (which only reads it)."""
        state = dict(self.strategy_state)
        if eligible is None:
            # The strategy works on a copy: a failed round leaves the server state as it was.
            state = {k: v.copy() for k, v in state.items()}
        return RoundContext(
            round=r,
            eligible=self.population.eligible if eligible is None else eligible,
            rng=rng,
            seed=self.seed,
            spec=self.spec,
            codec=self.codec,
            params=self.params,
            model=Blob.encode(self.spec, self.codec, self.params),
            state=state,
            num_clients=len(self.population.eligible),
            upload_codec=self.upload_codec,
            error_feedback=self.error_feedback,
        )

    def _exchange(self, r: int, exchange: Exchange, tally: _Tally, first: bool) -> None:
        tasks = exchange.tasks
        blobs = blob_table(*exchange.blobs)
        if first:
            for listener in self.listeners:
                listener.on_round_start(r, len(tasks))
        tally.selected += len(tasks)
        if isinstance(self.engine, OverSelects):
            # Extra clients may stand in for stragglers of a round's first stage only: a later
            # stage must reach exactly the clients that took part in the stages before it.
            self.engine.allow_over_selection(first)
        bytes_up = 0
        for result in self.engine.run(tasks, blobs):
            for listener in self.listeners:
                listener.on_result(result)
            cid = result.task.client_id
            if result.rejected is not None:
                tally.rejected += 1  # the receiver (the gRPC service) logged it with the reason
                continue
            if not result.ok:
                tally.failed += 1
                log.warning("round %d: client %d failed: %s", r, cid, result.error)
                continue
            bytes_up += len(result.payload or b"")
            if result.payload is not None and result.task.upload is not None:
                tally.payload_up += len(result.payload)
                tally.dense_up += 4 * result.task.upload.size
            try:
                result, vec = self._validate(r, result)
            except UpdateRejected as exc:
                tally.rejected += 1
                log.warning("round %d: update of client %d rejected: %s", r, cid, exc)
                continue
            if vec is not None:
                tally.norms.append((cid, update_norm(vec)))
            exchange.on_result(result, vec)
            tally.returned += 1
            metrics, dropped = plausible_metrics(result.metrics)
            if dropped:
                log.warning("round %d: client %d: left out %s", r, cid, describe_dropped(dropped))
            loss = metrics.get("train_loss")
            if loss is not None:
                tally.train_loss += loss * result.num_examples
                tally.train_weight += result.num_examples
        assumed = sum(len(blobs[d].payload) for t in tasks for d in t.blobs.values() if d in blobs)
        transfer = self._transfer(Transfer(assumed, bytes_up))
        tally.bytes_down += transfer.bytes_down
        tally.bytes_up += transfer.bytes_up

    def _validate(self, r: int, result: Result) -> tuple[Result, np.ndarray | None]:
        """The result as it may be used, and its decoded upload; ``UpdateRejected`` if neither.

        A fit result weighs at most the examples its client declared (``Population``), so a
        client cannot buy the aggregate by claiming more; its update is bounded by
        ``strategy.max_update_norm``.
        """
        if result.task.upload is None:
            check_count(result.num_examples)
            return result, None
        vec = decode_update(result, self.max_update_bytes)
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

    def evaluate(self, r: int) -> tuple[dict[str, Any], int]:
        """Central evaluation on the held-out set, and federated evaluation on clients' splits.

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
        ctx = self._context(r, rng, sorted(self.population.has_test_data))
        tasks = self.strategy.configure_evaluate(ctx)
        per_metric: dict[str, list[float]] = {}
        for result in self.engine.run(tasks, blob_table(ctx.model)):
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
            for k, v in kept.items():
                per_metric.setdefault(k, []).append(v)
        out: dict[str, Any] = {}
        for k, values in per_metric.items():
            higher = k not in ("loss", "rmse", "mae")
            for stat, v in fairness_summary(values, higher_is_better=higher).items():
                out[f"fed_{k}_{stat}"] = v
        sent = len(ctx.model.payload) * len(tasks)
        return out, self._transfer(Transfer(sent, 0)).bytes_down

    def _transfer(self, assumed: Transfer) -> Transfer:
        """The bytes of the engine's latest run: measured if the engine measures them, else
        ``assumed`` (what an in-process engine moves)."""
        if isinstance(self.engine, MeasuresTransfer):
            return self.engine.last_transfer()
        return assumed


def _preview(ids: Sequence[int], n: int = 10) -> str:
    head = ", ".join(str(i) for i in ids[:n])
    return head + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")
