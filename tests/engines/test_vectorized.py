"""What only the vectorized engine does: fallbacks with one warning per cause, chunking to a memory
budget, and streaming results chunk by chunk."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.client.base import ClientContext, FitResult
from fedloom.client.torch_client import LossFn, TorchClient, get_params
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import Blob, Task, blob_table
from fedloom.engines import SequentialEngine, _vmap_train
from fedloom.engines.vectorized import VectorizationFallbackWarning, VectorizedEngine
from fedloom.models import LinearModel
from tests.engines.conformance import (
    CASES_BY_NAME,
    assert_same_result,
    fit_task,
    make_world,
    reference,
    run_engine,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SIZES = (6, 10, 3, 7)
CONFIG = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "epochs": 2, "batch_size": 4, "seed": 3}


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class BranchingNet(nn.Module):
    """Data-dependent control flow: vmap cannot decide the branch for a batch of clients."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x if x.sum() > 0 else -x)  # type: ignore[no-any-return]


class UnusedHeadNet(nn.Module):
    """A parameter outside the loss: torch.optim skips it, weight decay included."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.head = nn.Linear(4, 3), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # type: ignore[no-any-return]


def _world(
    model: nn.Module,
    loss_fn: LossFn | None = None,
    sizes: tuple[int, ...] = SIZES,
    client_type: type[TorchClient] = TorchClient,
) -> tuple[Callable[[int], TorchClient], Blob]:
    rng = np.random.default_rng(0)
    data = [
        (rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n).astype(np.int64))
        for n in sizes
    ]

    def client_fn(cid: int) -> TorchClient:
        x, y = data[cid]
        return client_type(model, x, y, num_classes=3, client_id=cid, loss_fn=loss_fn)

    init = get_params(model)
    spec = ParamSpec.of(init)
    return client_fn, Blob.encode(spec, Float32Codec(), spec.flatten(init))


def _tasks(gp: Blob, n: int = len(SIZES), round_num: int = 1) -> list[Task]:
    return [fit_task(gp, cid, {**CONFIG, "round": round_num}, round_num) for cid in range(n)]


def _assert_matches_sequential(
    client_fn: Callable[[int], TorchClient], gp: Blob, engine: VectorizedEngine
) -> None:
    tasks = _tasks(gp)
    want = run_engine(SequentialEngine, client_fn, tasks, gp)
    got = {r.task.client_id: r for r in engine.run(tasks, blob_table(gp))}
    for cid, result in want.items():
        assert_same_result(got[cid], result, rtol=1e-6, atol=1e-7)


def _loss_with_item(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    scale = 1.0 if float(y.float().mean().item()) >= 0 else 2.0
    return nn.functional.cross_entropy(out, y) * scale


def _summed_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y, reduction="sum")


class TracingClient(TorchClient):
    def fit(
        self, params: Params, config: Mapping[str, Any], context: ClientContext | None = None
    ) -> FitResult:
        result = super().fit(params, config, context)
        result.metrics["traced"] = 1.0
        return result


FALLBACKS: dict[str, tuple[Callable[[], nn.Module], LossFn | None, type[TorchClient], str]] = {
    "batchnorm": (BatchNormNet, None, TorchClient, "BatchNorm1d.*running statistics"),
    "dropout": (DropoutNet, None, TorchClient, "Dropout.*random masks"),
    "control-flow": (BranchingNet, None, TorchClient, "vmap cannot run this model"),
    "unused-parameter": (UnusedHeadNet, None, TorchClient, r"\['head.weight', 'head.bias'\]"),
    "loss-calls-item": (lambda: LinearModel(4, 3), _loss_with_item, TorchClient, "vmap cannot"),
    "loss-not-a-mean": (lambda: LinearModel(4, 3), _summed_loss, TorchClient, "not a mean"),
    "subclass": (lambda: LinearModel(4, 3), None, TracingClient, "overrides TorchClient.fit"),
}


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_unvectorizable_clients_fall_back_with_one_warning_and_right_numbers(name: str) -> None:
    build, loss_fn, client_type, reason = FALLBACKS[name]
    torch.manual_seed(0)
    client_fn, gp = _world(build(), loss_fn, client_type=client_type)
    engine = VectorizedEngine(client_fn)

    with pytest.warns(VectorizationFallbackWarning, match=reason):
        _assert_matches_sequential(client_fn, gp, engine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_matches_sequential(client_fn, gp, engine)  # the next round does not warn again


def _smoothed_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y, label_smoothing=0.1)


@pytest.mark.parametrize(
    "loss_fn", [_smoothed_loss, nn.CrossEntropyLoss()], ids=["function", "module"]
)
def test_custom_mean_losses_are_vectorised_per_sample(
    loss_fn: LossFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = _count_chunks(monkeypatch)
    torch.manual_seed(0)
    client_fn, gp = _world(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), loss_fn)

    _assert_matches_sequential(client_fn, gp, VectorizedEngine(client_fn))

    assert chunks == [len(SIZES)]


class ScaledLoss:
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, y) * self.scale


def test_losses_with_their_own_state_are_not_shared_between_clients() -> None:
    torch.manual_seed(0)
    client_fn, gp = _world(LinearModel(4, 3))

    def with_own_loss(cid: int) -> TorchClient:
        client = client_fn(cid)
        client.loss_fn = ScaledLoss(1.0 + cid).loss
        return client

    _assert_matches_sequential(with_own_loss, gp, VectorizedEngine(with_own_loss))


def test_a_chunk_that_raises_is_rerun_client_by_client() -> None:
    torch.manual_seed(0)
    client_fn, gp = _world(LinearModel(4, 3))

    def with_bad_label(cid: int) -> TorchClient:
        client = client_fn(cid)
        if cid == 2:
            client.y_train = np.array([0, 7], np.int64)  # class 7 of 3
        return client

    with pytest.warns(VectorizationFallbackWarning, match="a vectorised chunk raised"):
        got = run_engine(VectorizedEngine, with_bad_label, _tasks(gp), gp)

    want = run_engine(SequentialEngine, with_bad_label, _tasks(gp), gp)
    assert got[2].error is not None and want[2].error is not None
    assert got[2].error.split(" at ")[0] == want[2].error.split(" at ")[0]
    for cid in (0, 1, 3):
        assert_same_result(got[cid], want[cid], rtol=1e-6, atol=1e-7)


def test_a_bad_client_at_the_probe_does_not_disable_vectorisation() -> None:
    torch.manual_seed(0)
    client_fn, gp = _world(LinearModel(4, 3))

    def first_is_bad(cid: int) -> TorchClient:
        client = client_fn(cid)
        if cid == 0:
            client.y_train = np.full(len(client.y_train), 9, np.int64)
        return client

    with pytest.warns(VectorizationFallbackWarning, match="a vectorised chunk raised"):
        got = run_engine(VectorizedEngine, first_is_bad, _tasks(gp), gp)

    assert got[0].error is not None and all(got[c].ok for c in (1, 2, 3))


def test_clients_without_data_return_a_zero_update() -> None:
    torch.manual_seed(0)
    client_fn, gp = _world(LinearModel(4, 3), sizes=(0, 6, 0))

    got = run_engine(VectorizedEngine, client_fn, _tasks(gp, 3), gp)

    want = run_engine(SequentialEngine, client_fn, _tasks(gp, 3), gp)
    for cid in range(3):
        assert_same_result(got[cid], want[cid])
    assert not np.frombuffer(got[0].payload or b"", np.float32).any()


def _count_chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    train_chunk = _vmap_train.train_chunk

    def counting(*args: Any, **kwargs: Any) -> Any:
        sizes.append(len(args[2]))
        return train_chunk(*args, **kwargs)

    monkeypatch.setattr("fedloom.engines.vectorized.train_chunk", counting)
    return sizes


def test_results_stream_out_chunk_by_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = _count_chunks(monkeypatch)
    world = make_world(CASES_BY_NAME["mlp-sgd-unequal"])
    engine = VectorizedEngine(world.client_fn, max_memory_mb=1e-3)

    stream = engine.run(world.tasks(), world.blobs)
    first = next(stream)

    assert chunks == [1]
    rest = list(stream)
    assert len(chunks) == 5 and len(rest) == 4
    assert first.task.client_id == 1  # the client with the most steps runs first


def test_one_chunk_yields_results_in_task_order(monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = _count_chunks(monkeypatch)
    world = make_world(CASES_BY_NAME["mlp-sgd-unequal"])
    tasks = world.tasks([3, 0, 4, 1, 2])

    results = list(VectorizedEngine(world.client_fn).run(tasks, world.blobs))

    assert chunks == [5]
    assert [r.task for r in results] == tasks
    for result in results:
        assert_same_result(result, reference("mlp-sgd-unequal")[result.task.client_id])


def test_a_thousand_clients_are_split_to_fit_the_memory_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chunks = _count_chunks(monkeypatch)
    torch.manual_seed(0)
    sizes = tuple(int(n) for n in np.random.default_rng(1).integers(1, 12, 1000))
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 3))
    client_fn, gp = _world(model, sizes=sizes)
    tasks = _tasks(gp, len(sizes))

    got = run_engine(lambda fn: VectorizedEngine(fn, max_memory_mb=2.0), client_fn, tasks, gp)

    assert len(chunks) > 1 and sum(chunks) == 1000
    want = run_engine(SequentialEngine, client_fn, [tasks[i] for i in (0, 499, 999)], gp)
    for cid, result in want.items():
        assert_same_result(got[cid], result)


def test_the_memory_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_memory_mb must be > 0"):
        VectorizedEngine(lambda cid: None, max_memory_mb=0)  # type: ignore[arg-type,return-value]


def test_importing_the_engines_package_does_not_import_the_vectorized_engine() -> None:
    # (torch 2.13 imports torch.func with torch itself; the vectorized engine stays lazy.)
    code = "import sys, fedloom.engines; assert 'fedloom.engines.vectorized' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_over_max_params_run_client_by_client_exactly_like_sequential(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # LinearModel(4, 3) has 4*3 + 3 = 15 parameters: over a cap of 14, within one of 15.
    client_fn, gp = _world(LinearModel(4, 3))
    capped = VectorizedEngine(client_fn, max_params=14)
    with caplog.at_level("INFO", logger="fedloom"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a deliberate choice, not a fallback: no warning
        tasks = _tasks(gp)
        want = run_engine(SequentialEngine, client_fn, tasks, gp)
        got = {r.task.client_id: r for r in capped.run(tasks, blob_table(gp))}
        for cid, result in want.items():
            assert_same_result(got[cid], result, rtol=0, atol=0)
    assert "the model has 15 parameters, over engine.max_params=14" in caplog.text
