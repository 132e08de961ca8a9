"""Client state files: a ``ClientStateStore`` saved to one safetensors file and loaded back is the
same store (every client, every version, every key), so a restarted deployment client goes on
from exactly the state it had; and the deployment client's use of that file (``--state DIR``):
written after a task that changed the state, taken over at start, refused when it is another
run's or another client's."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from fedloom.client.base import ClientContext, EvalResult, FitResult
from fedloom.client.deploy import STATE_FILE, ClientOptions, DeploymentClient
from fedloom.client.state import ClientStateFileError, ClientStateStore, State
from fedloom.core.codec import Float32Codec
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import EVALUATE, FIT, MODEL, Blob, Blobs, Task, Upload, blob_table
from fedloom.errors import DeploymentError


def _state(seed: int) -> State:
    rng = np.random.default_rng(seed)
    return {
        "control/hidden.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "control/hidden.bias": rng.normal(size=4).astype(np.float32),
        "ef/residual/out.weight": rng.normal(size=(2, 4)),
        "rng": np.array(seed, dtype=np.int64),  # 0-d
        "mask": rng.normal(size=5) > 0,
    }


def _store() -> ClientStateStore:
    """Three clients: one with two versions, one with one, one whose newest version is empty
    (it has no arrays, so only the file's version list can carry it)."""
    store = ClientStateStore(keep_previous=True)
    store.put(0, 1, _state(1))
    store.put(0, 3, _state(3))
    store.put(5, 2, _state(52))
    store.put(12, 1, _state(121))
    store.put(12, 2, {})
    return store


def _assert_same_state(got: State, expected: State) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_every_version_of_every_client_comes_back(tmp_path: Path) -> None:
    store, path = _store(), tmp_path / "client-state.safetensors"

    store.save(path)
    loaded = ClientStateStore.load(path)

    assert loaded.client_ids() == [0, 5, 12]
    assert [loaded.rounds(c) for c in (0, 5, 12)] == [[1, 3], [2], [1, 2]]
    assert loaded.nbytes == store.nbytes
    for cid in (0, 5, 12, 99):
        for r in range(6):
            _assert_same_state(loaded.get(cid, r), store.get(cid, r))


def test_tensor_names_carry_client_round_and_the_key_with_its_slashes(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    _store().save(path)

    with safe_open(str(path), framework="np") as fh:
        names = set(fh.keys())
        meta = fh.metadata()

    assert "c0/r3/ef/residual/out.weight" in names
    assert "c5/r2/control/hidden.bias" in names
    assert not any(n.startswith("c12/r2/") for n in names)  # the empty version has no tensor
    assert json.loads(meta["versions"])["12"] == [[1, list(_state(0))], [2, []]]
    assert meta["format"] == "fedloom.client_state"


@pytest.mark.parametrize("keep_previous", [True, False])
def test_keep_previous_is_kept(tmp_path: Path, keep_previous: bool) -> None:
    store = ClientStateStore(keep_previous=keep_previous)
    store.put(0, 1, {"c": np.array([1.0])})
    store.save(tmp_path / "s.safetensors")

    loaded = ClientStateStore.load(tmp_path / "s.safetensors")
    loaded.put(0, 2, {"c": np.array([2.0])})

    assert loaded.keep_previous is keep_previous
    assert loaded.rounds(0) == ([1, 2] if keep_previous else [2])


def test_rollback_after_load_is_what_it_was_before(tmp_path: Path) -> None:
    """A round the server runs again starts from the version before it, loaded or not."""
    original = _store()
    original.save(tmp_path / "s.safetensors")
    loaded = ClientStateStore.load(tmp_path / "s.safetensors")

    for store in (original, loaded):
        store.put(0, 3, {"c": np.array([30.0])})  # round 3 runs again
        store.put(5, 4, {"c": np.array([4.0])})
        store.put(12, 3, {"c": np.array([3.0])})

    for cid in (0, 5, 12):
        assert loaded.rounds(cid) == original.rounds(cid)
        for r in range(7):
            _assert_same_state(loaded.get(cid, r), original.get(cid, r))
    _assert_same_state(loaded.get(0, 3), _state(1))


def test_an_empty_store_writes_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    ClientStateStore(keep_previous=True).save(path, metadata={"run_id": "r1"})

    loaded, meta = ClientStateStore.load_with_metadata(path)

    assert len(loaded) == 0 and loaded.keep_previous and meta == {"run_id": "r1"}


def test_metadata_comes_back_and_cannot_shadow_the_layout(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    _store().save(path, metadata={"run_id": "abc123", "client_name": "site-a"})

    assert ClientStateStore.load_with_metadata(path)[1] == {
        "run_id": "abc123",
        "client_name": "site-a",
    }
    with pytest.raises(ValueError, match="versions"):
        _store().save(path, metadata={"versions": "{}"})


def test_saving_replaces_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "client-state.safetensors"
    store = _store()
    store.save(path)
    store.put(5, 3, {"c": np.array([3.0])})

    store.save(path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["client-state.safetensors"]
    assert ClientStateStore.load(path).rounds(5) == [2, 3]


def test_a_failed_save_keeps_the_old_file_and_removes_its_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "client-state.safetensors"
    _store().save(path)
    before = path.read_bytes()
    bad = ClientStateStore()
    bad.put(0, 1, {"c": np.array([object()])})  # safetensors cannot store object arrays

    with pytest.raises(SafetensorError, match="object"):
        bad.save(path)

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client-state.safetensors"]


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "garbage",
        "foreign",
        "missing-array",
        "unlisted-array",
        "bad-versions",
    ],
)
def test_a_damaged_or_foreign_file_is_refused_with_what_to_do(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "client-state.safetensors"
    _store().save(path)
    with safe_open(str(path), framework="np") as fh:
        meta = dict(fh.metadata())
        arrays = {n: fh.get_tensor(n) for n in fh.keys()}  # noqa: SIM118 (not iterable)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "garbage":
        path.write_bytes(b"\x00not safetensors at all" * 4)
    elif damage == "foreign":
        save_file({"weight": np.ones(3, np.float32)}, str(path), metadata={"format": "pt"})
    elif damage == "missing-array":
        del arrays["c0/r3/rng"]
        save_file(arrays, str(path), metadata=meta)
    elif damage == "unlisted-array":
        arrays["c0/r4/extra"] = np.ones(2)
        save_file(arrays, str(path), metadata=meta)
    else:
        save_file(arrays, str(path), metadata={**meta, "versions": '{"0": [[3, 1], [1, []]]}'})

    with pytest.raises(ClientStateFileError) as info:
        ClientStateStore.load(path)

    message = str(info.value)
    assert str(path) in message
    assert "delete" in message and "start this client's state from zero" in message
    assert isinstance(info.value, DeploymentError)  # the client exits as on other refusals


def test_a_missing_file_is_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ClientStateStore.load(tmp_path / "nothing.safetensors")


# -- the deployment client's state file (fedloom client --state DIR) ---------------------------


class _Counting:
    """Counts its fits in its client state; evaluations leave the state as it is."""

    num_examples = 1

    def fit(self, params: Params, config: Mapping[str, Any], context: ClientContext) -> FitResult:
        context.state["fits/count"] = context.state.get("fits/count", np.zeros(1)) + 1
        return FitResult(update=np.zeros(1, np.float32), num_examples=1)

    def evaluate(
        self, params: Params, config: Mapping[str, Any], context: ClientContext
    ) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=1)


def _deployment_client(folder: Path | None, name: str = "site-a") -> DeploymentClient:
    opts = ClientOptions(server="127.0.0.1:1", name=name, insecure=True, quiet=True, state=folder)
    dc = DeploymentClient(opts, lambda cfg, cid: _Counting())
    dc.client = _Counting()
    return dc


def _tasks(r: int) -> tuple[Task, Task, Blobs]:
    spec = ParamSpec(("w",), ((1,),), ("<f4",))
    model = Blob.encode(spec, Float32Codec(), np.zeros(1, np.float32))
    roles = {MODEL: model.digest}
    fit = Task(FIT, r, 3, {}, roles, Upload("float32", 1))
    return fit, Task(EVALUATE, r, 3, {}, roles), blob_table(model)


def test_the_client_writes_its_file_after_a_task_that_changed_its_state_only(
    tmp_path: Path,
) -> None:
    dc = _deployment_client(tmp_path)
    dc.run_id = "run1"
    path = tmp_path / STATE_FILE
    fit, evaluate, blobs = _tasks(1)

    assert dc._execute(fit, blobs).ok
    written = path.stat().st_ino
    assert dc._execute(evaluate, blobs).ok

    assert path.stat().st_ino == written  # the evaluation did not rewrite it
    store, meta = ClientStateStore.load_with_metadata(path)
    assert meta == {"run_id": "run1", "client_name": "site-a"}
    assert store.rounds(3) == [1] and store.get(3, 2)["fits/count"].tolist() == [1.0]


def test_a_restarted_client_goes_on_from_its_file(tmp_path: Path) -> None:
    first = _deployment_client(tmp_path)
    first.run_id = "run1"
    for r in (1, 2):
        fit, _, blobs = _tasks(r)
        first._execute(fit, blobs)

    second = _deployment_client(tmp_path)  # the process was killed and started again
    second._check_state_owner("run1", 3)
    second.run_id = "run1"
    fit, _, blobs = _tasks(2)  # the server runs round 2 again
    second._execute(fit, blobs)

    assert second.states.keep_previous
    assert second.states.get(3, 3)["fits/count"].tolist() == [2.0]
    assert ClientStateStore.load(tmp_path / STATE_FILE).rounds(3) == [1, 2]


def test_a_client_refuses_a_file_of_another_run_client_name_or_client_id(tmp_path: Path) -> None:
    dc = _deployment_client(tmp_path)
    dc.run_id = "run1"
    fit, _, blobs = _tasks(1)
    dc._execute(fit, blobs)

    again = _deployment_client(tmp_path)
    with pytest.raises(DeploymentError, match="belongs to run run1, but the server runs run2"):
        again._check_state_owner("run2", 3)
    with pytest.raises(DeploymentError, match=r"holds the state of client id\(s\) \[3\]"):
        again._check_state_owner("run1", 4)
    with pytest.raises(DeploymentError, match="belongs to client 'site-a', not 'site-b'"):
        _deployment_client(tmp_path, name="site-b")


def test_an_empty_file_of_another_run_is_taken_over(tmp_path: Path) -> None:
    ClientStateStore(keep_previous=True).save(
        tmp_path / STATE_FILE, {"run_id": "old", "client_name": "site-b"}
    )

    dc = _deployment_client(tmp_path)
    dc._check_state_owner("new", 0)

    assert len(dc.states) == 0


def test_a_damaged_file_stops_the_client_at_start(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"\x07" * 40)

    with pytest.raises(ClientStateFileError, match=r"delete .* to start this client's state"):
        _deployment_client(tmp_path)


def test_a_state_file_that_cannot_be_written_stops_the_client(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    dc = _deployment_client(folder)
    dc.run_id = "run1"
    folder.rmdir()  # the folder went away (an unmounted volume)
    fit, _, blobs = _tasks(1)

    with pytest.raises(DeploymentError, match="cannot write the client state file"):
        dc._execute(fit, blobs)


def test_without_a_state_folder_the_client_says_its_state_is_in_memory_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="fedloom.client"):
        dc = _deployment_client(None)
    fit, _, blobs = _tasks(1)
    dc._execute(fit, blobs)

    assert "lives in memory only" in caplog.text
    assert dc.states.rounds(3) == [1]
