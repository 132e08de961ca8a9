"""Shared fixtures of the engine conformance suite: the engines under test and small worlds.

Every engine must give the numbers of the sequential engine (the reference). To put a new engine
under the whole suite, add one line to ``ENGINE_FACTORIES``; import optional dependencies inside the
factory (``pytest.importorskip``) so the suite still runs where they are missing.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from fedloom.client.torch_client import TorchClient, get_params
from fedloom.core.codec import Float32Codec
from fedloom.core.params import ParamSpec
from fedloom.core.task import (
    FIT,
    MODEL,
    Blob,
    Blobs,
    Result,
    Task,
    Upload,
    blob_table,
)
from fedloom.engines import ClientFn, Engine, SequentialEngine
from fedloom.engines.vectorized import VectorizationFallbackWarning, VectorizedEngine
from fedloom.models import build_model
from tests.engines.test_ray_engine import shared_ray_engine

EngineFactory = Callable[[ClientFn], Engine]

ENGINE_FACTORIES: dict[str, EngineFactory] = {
    "sequential": SequentialEngine,
    "vectorized": VectorizedEngine,
    # A budget this small forces one client per chunk: the chunking path, and chunk independence.
    "vectorized-chunked": lambda client_fn: VectorizedEngine(client_fn, max_memory_mb=1e-3),
    "ray": shared_ray_engine,
}
ENGINE_MARKS: dict[str, list[pytest.MarkDecorator]] = {"ray": [pytest.mark.ray]}


def engine_params() -> list[Any]:
    """``ENGINE_FACTORIES`` as pytest parameters, each with its marks (``-m "not ray"``)."""
    return [pytest.param(name, marks=ENGINE_MARKS.get(name, [])) for name in ENGINE_FACTORIES]


def fit_task(
    model: Blob,
    client_id: int,
    config: Mapping[str, Any],
    round_num: int = 3,
    extra: Mapping[str, Blob] | None = None,
    parts: int = 1,
) -> Task:
    """A fit task on ``model`` (and ``extra`` blobs by role), uploading ``parts`` model-sized
    float32 vectors."""
    blobs = {MODEL: model.digest, **{role: b.digest for role, b in (extra or {}).items()}}
    return Task(
        FIT, round_num, client_id, config, blobs, Upload("float32", parts * model.spec.size)
    )


@contextmanager
def allow_fallback_warnings() -> Iterator[None]:
    """Engines may warn that some clients ran on a slower path; these tests check numbers only."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VectorizationFallbackWarning)
        yield


@dataclass(frozen=True)
class Case:
    """A small federation: one model shared by clients of the given sizes, and one fit config."""

    name: str
    model: str
    sizes: tuple[int, ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    task: str = "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.model == "char_lstm":
            return (5,)  # sequences of 5 character ids
        return (1, 12, 12) if self.model == "cnn" else (6,)

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "regression" else 3


SGD = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
# Adam divides by sqrt(v): a parameter whose gradient is ~0 moves by up to lr on float noise alone,
# so its lr sets the scale of the agreement that can be asked for.
ADAM = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-3}
E2B5 = {"epochs": 2, "batch_size": 5}  # sizes below leave partial last batches
UNEQUAL = (3, 17, 9, 12, 1)
EQUAL = (12, 12, 12, 12)

CASES = [
    Case("mlp-sgd-equal", "mlp", EQUAL, {**SGD, **E2B5}),
    Case("mlp-sgd-unequal", "mlp", UNEQUAL, {**SGD, **E2B5}),
    Case("mlp-plain-sgd", "mlp", UNEQUAL, {"lr": 0.05, **E2B5}),
    Case("mlp-adam-equal", "mlp", EQUAL, {**ADAM, **E2B5}),
    Case("mlp-adam-unequal", "mlp", UNEQUAL, {**ADAM, **E2B5}),
    Case("mlp-gradient", "mlp", UNEQUAL, {"mode": "gradient", "batch_size": 5}),
    Case("cnn-sgd-equal", "cnn", EQUAL, {**SGD, **E2B5}),
    Case("cnn-sgd-unequal", "cnn", UNEQUAL, {**SGD, **E2B5}),
    Case("cnn-adam-equal", "cnn", EQUAL, {**ADAM, **E2B5}),
    Case("cnn-adam-unequal", "cnn", UNEQUAL, {**ADAM, **E2B5}),
    Case("cnn-gradient", "cnn", UNEQUAL, {"mode": "gradient", "batch_size": 5}),
    Case("linear-regression", "linear", UNEQUAL, {**SGD, **E2B5}, task="regression"),
    # The recurrent model: eagerly the fused LSTM kernel, vectorised the unrolled recurrence.
    Case("char-lstm-sgd-unequal", "char_lstm", UNEQUAL, {**SGD, **E2B5}),
]


@dataclass
class World:
    client_fn: ClientFn
    global_params: Blob
    case: Case

    @property
    def blobs(self) -> Blobs:
        return blob_table(self.global_params)

    def tasks(self, client_ids: Sequence[int] | None = None, round_num: int = 3) -> list[Task]:
        ids = range(len(self.case.sizes)) if client_ids is None else client_ids
        config = {**self.case.config, "round": round_num, "seed": 7}
        return [fit_task(self.global_params, cid, config, round_num) for cid in ids]


def make_world(case: Case) -> World:
    """Synthetic, learnable data; the model's initial weights are the global params."""
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    data = []
    for n in case.sizes:
        if case.model == "char_lstm":  # predict the most frequent of 3 symbols
            x = rng.integers(0, 3, size=(n, *case.input_shape)).astype(np.uint8)
            counts = np.stack([(x == k).sum(1) for k in range(3)], axis=1)
            data.append((x, counts.argmax(1).astype(np.int64)))
            continue
        x = rng.normal(size=(n, *case.input_shape)).astype(np.float32)
        score = x.reshape(n, -1)[:, :3]
        if case.task == "regression":
            y: np.ndarray = (score.sum(1) + 0.1 * rng.normal(size=n)).astype(np.float32)
        else:
            y = score.argmax(1).astype(np.int64)
        data.append((x, y))
    torch.manual_seed(0)
    model = build_model(case.model, case.input_shape, case.num_outputs, hidden=[16])

    def client_fn(cid: int) -> TorchClient:
        x, y = data[cid]
        return TorchClient(
            model,
            x,
            y,
            task=case.task,  # type: ignore[arg-type]
            num_classes=case.num_outputs,
            client_id=cid,
            seed=1,
        )

    init = get_params(model)
    spec = ParamSpec.of(init)
    return World(client_fn, Blob.encode(spec, Float32Codec(), spec.flatten(init)), case)


def run_engine(
    factory: EngineFactory, client_fn: ClientFn, tasks: Sequence[Task], blobs: Blobs | Blob
) -> dict[int, Result]:
    """Results by client id; every task gets exactly one."""
    engine = factory(client_fn)
    table = blob_table(blobs) if isinstance(blobs, Blob) else blobs
    try:
        results = list(engine.run(tasks, table))
    finally:
        engine.close()
    assert sorted(r.task.client_id for r in results) == sorted(t.client_id for t in tasks)
    return {r.task.client_id: r for r in results}


CASES_BY_NAME = {case.name: case for case in CASES}


@functools.cache
def reference(case_name: str) -> dict[int, Result]:
    """What the sequential engine returns for every client of the case (computed once)."""
    world = make_world(CASES_BY_NAME[case_name])
    return run_engine(SequentialEngine, world.client_fn, world.tasks(), world.blobs)


def update(result: Result) -> np.ndarray:
    assert result.ok, result.error
    assert result.payload is not None
    return np.frombuffer(result.payload, dtype="<f4")


def assert_same_result(got: Result, want: Result, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert got.ok, got.error
    assert got.task == want.task
    assert got.num_examples == want.num_examples
    np.testing.assert_allclose(update(got), update(want), rtol=rtol, atol=atol)
    assert set(got.metrics) == set(want.metrics)
    for key, value in want.metrics.items():
        assert got.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
