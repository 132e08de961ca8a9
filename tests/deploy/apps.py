"""Client apps for the deployment tests, loaded by ``fedloom client --app tests.deploy.apps:NAME``.

The partition comes from ``FEDLOOM_TEST_PARTITION=i/N`` and an optional per-fit delay from
``FEDLOOM_TEST_FIT_DELAY`` (seconds), applied in the rounds ``FEDLOOM_TEST_DELAY_ROUNDS`` lists
(comma-separated; default every round), so a test can kill clients, or the server, while clients
are in a round.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedloom.client.base import ClientContext, EvalResult, FitResult
from fedloom.client.torch_client import TorchClient
from fedloom.config import Config
from fedloom.core.params import Params
from fedloom.simulation import Simulation


class SlowClient:
    """A TorchClient that takes ``delay`` extra seconds per fit, and says in its log when a fit
    starts and when it has finished (its new client state is then about to be stored).

    It passes the task's context on, so it runs algorithms with client state (SCAFFOLD), and
    declares its test examples, so federated evaluation scores it as it scores a demo client."""

    def __init__(
        self, inner: TorchClient, delay: float, rounds: frozenset[int] | None = None
    ) -> None:
        self.inner = inner
        self.delay = delay
        self.rounds = rounds
        self.num_examples = inner.num_examples
        self.num_test_examples = 0 if inner.x_test is None else len(inner.x_test)

    def fit(
        self, params: Params, config: Mapping[str, Any], context: ClientContext | None = None
    ) -> FitResult:
        print(f"fit round {config.get('round')} started", flush=True)
        if self.rounds is None or int(config.get("round", 0)) in self.rounds:
            time.sleep(self.delay)
        result = self.inner.fit(params, config, context)
        print(f"fit round {config.get('round')} finished", flush=True)
        return result

    def evaluate(
        self, params: Params, config: Mapping[str, Any], context: ClientContext | None = None
    ) -> EvalResult:
        return self.inner.evaluate(params, config, context)


def slow_client(cfg: Config) -> SlowClient:
    index, count = (int(x) for x in os.environ["FEDLOOM_TEST_PARTITION"].split("/"))
    part = cfg.partition.model_copy(update={"num_clients": count})
    sim = Simulation(cfg.model_copy(update={"partition": part}))
    rounds = os.environ.get("FEDLOOM_TEST_DELAY_ROUNDS")
    return SlowClient(
        sim.client(index),
        float(os.environ.get("FEDLOOM_TEST_FIT_DELAY", "0")),
        frozenset(int(r) for r in rounds.split(",")) if rounds else None,
    )


class FailingClient:
    """Raises in every fit: its rounds can never succeed."""

    num_examples = 10

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        raise RuntimeError("local training crashed (on purpose)")

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        raise RuntimeError("evaluation crashed (on purpose)")


def failing_client() -> FailingClient:
    return FailingClient()


class PoisonedClient:
    """Uploads an update of NaNs every round: the server rejects it ("non-finite values")."""

    num_examples = 10

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        poisoned = {k: np.full_like(v, np.nan) for k, v in params.items()}
        return FitResult(update=poisoned, num_examples=self.num_examples)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=self.num_examples)


def poisoned_client() -> PoisonedClient:
    return PoisonedClient()


def slow_unmask_client(cfg: Config) -> TorchClient:
    """A demo client whose secure-aggregation unmask stage starts by saying so in its log and
    then waits ``FEDLOOM_TEST_UNMASK_DELAY`` seconds (in the rounds ``FEDLOOM_TEST_DELAY_ROUNDS``
    lists), so a test can kill it after it uploaded its masked input and before it reveals."""
    from fedloom.client.execute import register_stage, stage_handler
    from fedloom.secagg import UNMASK

    unmask = stage_handler(UNMASK)
    assert unmask is not None
    delay = float(os.environ.get("FEDLOOM_TEST_UNMASK_DELAY", "0"))
    listed = os.environ.get("FEDLOOM_TEST_DELAY_ROUNDS")
    rounds = frozenset(int(r) for r in listed.split(",")) if listed else None

    def slow(client: Any, task: Any, params: Params, context: ClientContext) -> Any:
        print(f"unmask round {task.round} started", flush=True)
        if rounds is None or task.round in rounds:
            time.sleep(delay)
        return unmask(client, task, params, context)

    register_stage(UNMASK, slow)
    index, count = (int(x) for x in os.environ["FEDLOOM_TEST_PARTITION"].split("/"))
    part = cfg.partition.model_copy(update={"num_clients": count})
    return Simulation(cfg.model_copy(update={"partition": part})).client(index)
