"""A damaged --state folder: resume from the newest intact checkpoint, or refuse with the reason;
never a traceback, a silent new run, or a silent resume from damaged weights."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedloom.app.user_code import server_federation
from fedloom.config import load_config
from fedloom.errors import DeploymentError
from fedloom.server.deploy import ServerOptions, serve
from fedloom.server.state import CHECKPOINT_DIR, DB_FILE, StateStore

pytestmark = pytest.mark.deploy

NEEDS = {"params": np.zeros(4, np.float32)}


def _three_rounds(folder: Path) -> StateStore:
    """A store with rounds 1..3 committed; checkpoints of rounds 2 and 3 kept."""
    store = StateStore(folder)
    store.open_run("{}", {"seed": 1})
    for r in (1, 2, 3):
        store.commit_round({"round": r, "status": "ok"}, {"params": np.full(4, r, np.float32)})
    return store


def _checkpoint(folder: Path, r: int) -> Path:
    return folder / CHECKPOINT_DIR / f"round-{r:04d}.safetensors"


def _resume(folder: Path) -> tuple[int, list[float], list[int]]:
    store = StateStore(folder)
    try:
        store.open_run("{}", {"seed": 1})
        last, arrays = store.resume(NEEDS)
        return last, arrays["params"].tolist(), [rec["round"] for rec in store.history()]
    finally:
        store.close()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _damage_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff" * 8  # the JSON header starts here
    path.write_bytes(bytes(data))


def _flip_sign(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x80  # the sign bit of the last float32 of the params
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _damage_header, _flip_sign])
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(
    tmp_path: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    _three_rounds(tmp_path).close()
    damage(_checkpoint(tmp_path, 3))  # type: ignore[operator]

    last, params, history = _resume(tmp_path)

    assert (last, params, history) == (2, [2.0] * 4, [1, 2])
    assert "the checkpoint of round 3" in caplog.text
    assert "resuming after round 2, the newest intact checkpoint; rounds 3..3 run again" in (
        caplog.text
    )


def test_nan_written_into_a_checkpoint_without_a_recorded_checksum_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a round recorded by an older version (no SHA-256): the finite-params check still holds
    _three_rounds(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        db.execute("UPDATE rounds SET sha256 = NULL")
    path = _checkpoint(tmp_path, 3)
    data = bytearray(path.read_bytes())
    data[-4:] = np.array([np.nan], np.float32).tobytes()
    path.write_bytes(bytes(data))

    assert _resume(tmp_path)[0] == 2
    assert "holds non-finite params" in caplog.text


def test_no_intact_checkpoint_is_a_clear_refusal(tmp_path: Path) -> None:
    _three_rounds(tmp_path).close()
    _truncate(_checkpoint(tmp_path, 3))
    _checkpoint(tmp_path, 2).unlink()

    with pytest.raises(DeploymentError, match="cannot resume: no intact checkpoint") as exc:
        _resume(tmp_path)
    assert "the checkpoint of round 1 is missing" in str(exc.value)


@pytest.mark.parametrize("where", ["garbage page", "truncated"])
def test_a_damaged_database_is_a_fedloom_error_naming_the_file(tmp_path: Path, where: str) -> None:
    _three_rounds(tmp_path).close()
    db = tmp_path / DB_FILE
    data = bytearray(db.read_bytes())
    if where == "garbage page":
        data[4096:8192] = np.random.default_rng(0).bytes(4096)
    else:
        data = data[:5000]
    db.write_bytes(bytes(data))

    with pytest.raises(DeploymentError) as exc:
        _resume(tmp_path)
    assert f"the state database {str(db)!r} is damaged" in str(exc.value)


def test_the_database_file_alone_holds_every_round_and_the_folder_can_move(tmp_path: Path) -> None:
    # Prepare: while the server runs (WAL open), copy state.sqlite3 without -wal and -shm,
    # and the checkpoints, to another place
    store = _three_rounds(tmp_path / "a")
    moved = tmp_path / "elsewhere"
    (moved / CHECKPOINT_DIR).mkdir(parents=True)
    shutil.copy(tmp_path / "a" / DB_FILE, moved / DB_FILE)
    for r in (2, 3):
        shutil.copy(_checkpoint(tmp_path / "a", r), _checkpoint(moved, r))
    store.close()

    assert _resume(moved) == (3, [3.0] * 4, [1, 2, 3])


def test_checkpoints_without_a_recorded_run_are_not_silently_overwritten(tmp_path: Path) -> None:
    _three_rounds(tmp_path).close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / (DB_FILE + suffix)).unlink(missing_ok=True)

    with pytest.raises(DeploymentError, match=r"holds checkpoints .* but its database records no"):
        StateStore(tmp_path).open_run("{}", {"seed": 1})
    (tmp_path / DB_FILE).unlink()
    info = StateStore(tmp_path).open_run("{}", {"seed": 1}, new_run=True)

    assert (info.resumed, info.last_round) == (False, 0)
    aside = list((tmp_path / CHECKPOINT_DIR).glob("orphaned-*/round-*.safetensors"))
    assert sorted(p.name for p in aside) == ["round-0002.safetensors", "round-0003.safetensors"]


def test_an_out_folder_with_metrics_is_not_overwritten_by_a_new_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"round": 1}\n')
    opts = ServerOptions(
        address="127.0.0.1:0", state=tmp_path / "state", out=out, insecure=True, quiet=True
    )

    with pytest.raises(DeploymentError, match="holds the metrics of an earlier run"):
        cfg = load_config(None, ["rounds=1"])
        serve(cfg, opts, lambda: server_federation(cfg))
    assert (out / "metrics.jsonl").read_text() == '{"round": 1}\n'
