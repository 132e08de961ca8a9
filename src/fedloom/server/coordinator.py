"""The coordinator's round loop, independent of how clients execute.

select -> broadcast -> (engine runs clients) -> validate -> aggregate (streaming)
       -> pseudo-gradient -> server optimiser -> evaluate -> record
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedloom.core.codec import Codec, Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import GlobalParams, Result
from fedloom.engines.base import Engine, MeasuresTransfer, Transfer
from fedloom.errors import UpdateRejected
from fedloom.metrics import fairness_summary
from fedloom.optim import OptState
from fedloom.server.validation import decode_update
from fedloom.strategies.base import Strategy

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
    opt_state: OptState = field(init=False)
    history: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.params = np.ascontiguousarray(self.params, dtype=np.float32)
        self.opt_state = self.strategy.server_optimizer.init(self.params)
        if self.population.skipped:
            log.warning(
                "%d clients have no training data and are skipped: %s",
                len(self.population.skipped),
                _preview(self.population.skipped),
            )

    @property
    def global_params(self) -> Params:
        return self.spec.unflatten(self.params)

    def run(self, rounds: int, start_round: int = 1) -> list[dict[str, Any]]:
        for r in range(start_round, rounds + 1):
            self.run_round(r, evaluate=r % self.eval_every == 0 or r == rounds)
        return self.history

    def run_round(self, r: int, evaluate: bool = True) -> dict[str, Any]:
        start = time.perf_counter()
        rng = np.random.default_rng([self.seed, r])
        tasks = self.strategy.configure_fit(r, self.population.eligible, rng, self.seed)
        down = GlobalParams.encode(self.spec, self.codec, self.params)
        for listener in self.listeners:
            listener.on_round_start(r, len(tasks))

        agg = self.strategy.aggregator()
        agg.begin(self.spec.size)
        bytes_up, rejected, failed = 0, [], []
        train_loss, train_weight = 0.0, 0
        for result in self.engine.run(tasks, down):
            for listener in self.listeners:
                listener.on_result(result)
            cid = result.task.client_id
            if not result.ok:
                failed.append(cid)
                log.warning("round %d: client %d failed: %s", r, cid, result.error)
                continue
            bytes_up += len(result.payload or b"")
            try:
                vec = decode_update(result, down, self.max_update_bytes)
            except UpdateRejected as exc:
                rejected.append(cid)
                log.warning("round %d: update of client %d rejected: %s", r, cid, exc)
                continue
            agg.add(vec, result.num_examples)
            if "train_loss" in result.metrics:
                train_loss += result.metrics["train_loss"] * result.num_examples
                train_weight += result.num_examples

        record: dict[str, Any] = {
            "round": r,
            "selected": len(tasks),
            "returned": agg.count,
            "rejected": len(rejected),
            "failed": len(failed),
        }
        transfer = self._transfer(Transfer(len(down.payload) * len(tasks), bytes_up))
        record["bytes_down"], record["bytes_up"] = transfer.bytes_down, transfer.bytes_up
        if agg.count >= self.strategy.min_fit_clients:
            pseudo_grad = self.strategy.pseudo_gradient(agg.finish())
            self.params, self.opt_state = self.strategy.server_optimizer.step(
                self.params, pseudo_grad, self.opt_state
            )
            self.params = self.params.astype(np.float32, copy=False)
            record["status"] = "ok"
        else:
            record["status"] = "failed"
            log.error(
                "round %d: only %d usable updates, min_fit_clients is %d; the global model "
                "is unchanged",
                r,
                agg.count,
                self.strategy.min_fit_clients,
            )
        if train_weight:
            record["train_loss"] = train_loss / train_weight
        if evaluate:
            metrics, eval_bytes = self.evaluate(r)
            record.update(metrics)
            record["bytes_down"] += eval_bytes
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        for listener in self.listeners:
            listener.on_round_end(record)
        return record

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
        eligible = sorted(self.population.has_test_data)
        tasks = self.strategy.configure_evaluate(r, eligible, rng, self.seed)
        down = GlobalParams.encode(self.spec, self.codec, self.params)
        per_metric: dict[str, list[float]] = {}
        for result in self.engine.run(tasks, down):
            if not result.ok:
                log.warning(
                    "round %d: evaluation on client %d failed: %s",
                    r,
                    result.task.client_id,
                    result.error,
                )
                continue
            for k, v in result.metrics.items():
                # A metric can be undefined on one client (AUC with a single class): leave it out.
                if math.isfinite(v):
                    per_metric.setdefault(k, []).append(float(v))
        out: dict[str, Any] = {}
        for k, values in per_metric.items():
            higher = k not in ("loss", "rmse", "mae")
            for stat, v in fairness_summary(values, higher_is_better=higher).items():
                out[f"fed_{k}_{stat}"] = v
        return out, self._transfer(Transfer(len(down.payload) * len(tasks), 0)).bytes_down

    def _transfer(self, assumed: Transfer) -> Transfer:
        """The bytes of the engine's latest run: measured if the engine measures them, else
        ``assumed`` (what an in-process engine moves)."""
        if isinstance(self.engine, MeasuresTransfer):
            return self.engine.last_transfer()
        return assumed


def _preview(ids: Sequence[int], n: int = 10) -> str:
    head = ", ".join(str(i) for i in ids[:n])
    return head + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")
