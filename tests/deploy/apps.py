"""Client apps for the deployment tests, loaded by ``fedloom client --app tests.deploy.apps:NAME``.

The partition comes from ``FEDLOOM_TEST_PARTITION=i/N`` and an optional per-fit delay from
``FEDLOOM_TEST_FIT_DELAY`` (seconds), so a test can kill clients while they are in a round.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from fedloom.client.base import EvalResult, FitResult
from fedloom.client.torch_client import TorchClient
from fedloom.config import Config
from fedloom.core.params import Params
from fedloom.simulation import Simulation


class SlowClient:
    """A TorchClient that takes ``delay`` extra seconds per fit."""

    def __init__(self, inner: TorchClient, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.num_examples = inner.num_examples

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        print(f"fit round {config.get('round')} started", flush=True)
        time.sleep(self.delay)
        return self.inner.fit(params, config)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return self.inner.evaluate(params, config)


def slow_client(cfg: Config) -> SlowClient:
    index, count = (int(x) for x in os.environ["FEDLOOM_TEST_PARTITION"].split("/"))
    part = cfg.partition.model_copy(update={"num_clients": count})
    sim = Simulation(cfg.model_copy(update={"partition": part}))
    return SlowClient(sim.client(index), float(os.environ.get("FEDLOOM_TEST_FIT_DELAY", "0")))


class FailingClient:
    """Raises in every fit: its rounds can never succeed."""

    num_examples = 10

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        raise RuntimeError("local training crashed (on purpose)")

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        raise RuntimeError("evaluation crashed (on purpose)")


def failing_client() -> FailingClient:
    return FailingClient()
