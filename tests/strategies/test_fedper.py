"""FedPer: the client keeps its personalisation layers and uploads the base layers only; the
server averages the base layers. Hand-computed on a two-weight model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from torch import nn

from fedloom.client.base import ClientContext, EvalResult, FitResult
from fedloom.client.execute import execute_task
from fedloom.client.torch_client import TorchClient
from fedloom.core.codec import get_codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import UPLOAD_PARAMS, Blob, Task, Upload
from fedloom.engines import SequentialEngine
from fedloom.errors import ConfigError
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies import FedPer
from fedloom.strategies.base import RoundContext
from fedloom.strategies.fedper import personal_names

# y = b * (a * x): "0.weight" is the base layer a, "1.weight" the personalisation layer b
SPEC = ParamSpec(names=("0.weight", "1.weight"), shapes=((1, 1), (1, 1)), dtypes=("<f4", "<f4"))
GLOBAL = {"0.weight": np.ones((1, 1), np.float32), "1.weight": np.full((1, 1), 0.5, np.float32)}
CONFIG = {"epochs": 1, "batch_size": 1, "lr": 0.1, "round": 1}
LOCAL = {"local": {"name": "fedper", "personal": ["1.weight"]}}
HEAD = "fedper/1.weight"


def two_layer_client(cid: int = 0) -> TorchClient:
    """One example (x=1, y=0): the loss is (a b)^2, so dL/da = 2 a b^2 and dL/db = 2 a^2 b."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    x, y = np.ones((1, 1), np.float32), np.zeros(1, np.float32)
    return TorchClient(model, x, y, task="regression", num_classes=1, client_id=cid)


def test_a_new_client_trains_from_the_global_head_and_keeps_what_it_ends_with() -> None:
    context = ClientContext()

    fit = two_layer_client().fit(GLOBAL, {**CONFIG, **LOCAL}, context)

    # a = 1, b = 0.5: dL/da = 0.5, dL/db = 1 -> a = 0.95, b = 0.4
    np.testing.assert_allclose(np.asarray(fit.update), [-0.05, 0.0], rtol=1e-6)
    np.testing.assert_allclose(context.state[HEAD], [[0.4]], rtol=1e-6)


def test_a_returning_client_trains_from_its_own_head_which_never_leaves_it() -> None:
    context = ClientContext(state={HEAD: np.full((1, 1), 2.0, np.float32)})

    fit = two_layer_client().fit(GLOBAL, {**CONFIG, **LOCAL}, context)

    # a = 1, b = 2 (its own, not the global 0.5): dL/da = 8, dL/db = 4 -> a = 0.2, b = 1.6
    upload = np.asarray(fit.update)
    np.testing.assert_allclose(upload, [-0.8, 0.0], rtol=1e-6)
    assert upload[1] == 0.0  # exactly: the head's entry carries nothing
    np.testing.assert_allclose(context.state[HEAD], [[1.6]], rtol=1e-6)


def test_evaluation_scores_the_personalised_model() -> None:
    client = two_layer_client()
    context = ClientContext(state={HEAD: np.full((1, 1), 1.6, np.float32)})
    config = {"round": 1, **LOCAL}

    personal = client.evaluate(GLOBAL, config, context)
    plain = client.evaluate(GLOBAL, {"round": 1}, context)

    assert personal.loss == pytest.approx(1.6**2)  # b = 1.6 from the state, a = 1
    assert plain.loss == pytest.approx(0.5**2)  # the global model


class FixedClient:
    """Uploads a fixed update, personal entry included (a client that ignores FedPer)."""

    def __init__(self, update: list[float], n: int) -> None:
        self.update, self.n = update, n

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        assert config["local"] == LOCAL["local"]
        return FitResult(update=np.array(self.update, np.float32), num_examples=self.n)

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=self.n)


def test_the_server_averages_the_base_layers_and_never_receives_the_head() -> None:
    clients = {0: FixedClient([1.0, 5.0], 1), 1: FixedClient([3.0, 7.0], 3)}
    coord = Coordinator(
        strategy=FedPer(personal_layers=["1"]),
        engine=SequentialEngine(clients.__getitem__),
        spec=SPEC,
        params=np.array([1.0, 0.5], np.float32),
        population=Population({0: 1, 1: 3}),
    )

    coord.run_round(1)

    # base: 1 + (1 * 1 + 3 * 3) / 4 = 3.5; the head keeps its initial 0.5
    np.testing.assert_allclose(coord.params, [3.5, 0.5], rtol=1e-6)


def test_over_rounds_heads_stay_on_their_clients_and_the_global_head_never_moves() -> None:
    clients = {cid: two_layer_client(cid) for cid in range(2)}
    engine = SequentialEngine(clients.__getitem__)
    init = SPEC.flatten(GLOBAL)
    coord = Coordinator(
        strategy=FedPer(personal_layers=["1"], client_config=CONFIG),
        engine=engine,
        spec=SPEC,
        params=init.copy(),
        population=Population({0: 1, 1: 1}),
    )
    uploads: list[np.ndarray] = []

    class Uploads:
        def on_round_start(self, round_num: int, num_clients: int) -> None: ...

        def on_result(self, result: Any) -> None:
            uploads.append(np.frombuffer(result.payload, "<f4"))

        def on_round_end(self, record: dict[str, Any]) -> None: ...

    coord.listeners = [Uploads()]
    coord.run(3)

    assert coord.params[1] == init[1]  # the global head is the initial one
    heads = [engine.states.get(cid, 4)[HEAD] for cid in range(2)]
    assert all(abs(float(h[0, 0]) - 0.5) > 1e-3 for h in heads)  # each client trained its own
    # every upload is the base layer's one value; round 1's is a's delta, -0.05 (see above)
    assert [u.shape for u in uploads] == [(1,)] * 6
    np.testing.assert_allclose(uploads[:2], [[-0.05], [-0.05]], rtol=1e-6)


def test_the_fit_task_names_the_base_layers_and_its_upload_takes_their_values_only() -> None:
    spec = ParamSpec(
        names=("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"),
        shapes=((3, 2), (3,), (2, 3), (2,)),
        dtypes=("<f4",) * 4,
    )
    params = np.zeros(spec.size, np.float32)
    codec = get_codec("float32")
    ctx = RoundContext(
        1,
        [0],
        np.random.default_rng(0),
        7,
        spec,
        codec,
        params,
        Blob.encode(spec, codec, params),
        {},
        1,
    )

    (task,) = FedPer(personal_layers=["net.2"]).configure_fit(ctx)

    # base: 3 x 2 + 3 = 9 of the model's 17 values
    assert task.config[UPLOAD_PARAMS] == ["net.0.weight", "net.0.bias"]
    assert task.upload is not None and (task.upload.size, task.upload.mask) == (9, None)


def test_the_client_uploads_the_named_parameters_only() -> None:
    task = Task(
        "fit", 1, 0, {**CONFIG, **LOCAL, UPLOAD_PARAMS: ["0.weight"]}, upload=Upload("float32", 1)
    )
    blob = Blob.encode(SPEC, get_codec("float32"), SPEC.flatten(GLOBAL))
    state = {HEAD: np.full((1, 1), 2.0, np.float32)}

    result = execute_task(
        two_layer_client(), replace(task, blobs={"model": blob.digest}), {blob.digest: blob}, state
    )

    # a's delta only (-0.8, as above): 4 bytes, the head's trained 1.6 stays in the state
    assert result.ok, result.error
    assert result.payload is not None and len(result.payload) == 4
    np.testing.assert_allclose(np.frombuffer(result.payload, "<f4"), [-0.8], rtol=1e-6)
    assert result.state is not None
    np.testing.assert_allclose(result.state[HEAD], [[1.6]], rtol=1e-6)


def test_personal_layers_that_name_the_whole_model_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"name every parameter of the model"):
        Coordinator(
            strategy=FedPer(personal_layers=["0", "1"]),
            engine=SequentialEngine(lambda cid: two_layer_client(cid)),
            spec=SPEC,
            params=SPEC.flatten(GLOBAL),
            population=Population({0: 1}),
        )


def test_layer_names_that_the_model_lacks_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"personal_layers names \['head'\].*'0.weight'"):
        Coordinator(
            strategy=FedPer(personal_layers=["1", "head"]),
            engine=SequentialEngine(lambda cid: two_layer_client(cid)),
            spec=SPEC,
            params=SPEC.flatten(GLOBAL),
            population=Population({0: 1}),
        )
    with pytest.raises(ConfigError, match=r"needs strategy\.personal_layers"):
        FedPer()


def test_module_prefixes_name_their_parameters() -> None:
    spec = ParamSpec(
        names=("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"),
        shapes=((2, 2), (2,), (1, 2), (1,)),
        dtypes=("<f4",) * 4,
    )

    assert personal_names(spec, ["net.2"]) == ("net.2.weight", "net.2.bias")
    assert personal_names(spec, ["net.0.bias"]) == ("net.0.bias",)
    with pytest.raises(ConfigError):
        personal_names(spec, ["net.2.w"])  # a prefix stops at a dot
