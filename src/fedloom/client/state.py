"""Client state: named arrays that belong to one client and live across rounds.

Error-feedback residuals, SCAFFOLD control variates, personal layers and RNG keys are client state.
In simulation the engine owns a ``ClientStateStore`` (sequential, vectorized and Ray alike); in a
deployment the client process owns one for itself. State never leaves the client unless a protocol
says so: it is not part of any upload.

Versions are kept by the round that wrote them, and a task of round ``r`` starts from the newest
version written by a round before ``r``. A round that runs again (the deployment server retried it,
or resumed after a crash that came after clients had trained) therefore starts from the same state
as the first attempt, and the run's numbers do not depend on the crash.

Memory: only clients that have state use any. SCAFFOLD keeps one control variate per client, the
size of the model: 10,000 clients of a 1M-parameter float32 model hold 40 GB in one simulation
process (about 40 MB per client), and ``keep_previous`` (deployment) doubles it per client.

A store can be saved to one safetensors file and loaded back (``save``/``load``), so a deployment
client that restarts (``fedloom client --state DIR``) goes on from the state it had. Layout:

- one tensor per array of every version of every client, named ``c{client_id}/r{round}/{key}``.
  Client ids and rounds are integers, so the first two ``/`` end them and the rest of the name is
  the state key as it was, ``/`` included (``c3/r2/control/fc.weight`` is key ``control/fc.weight``
  of client 3's version written by round 2);
- metadata ``format`` (``fedloom.client_state``), ``format_version`` (``1``), ``keep_previous``
  (``true``/``false``), and ``versions``: JSON ``{client_id: [[round, [key, ...]], ...]}`` with each
  client's versions oldest first and each version's keys in their order. It lists versions that
  hold no arrays too, which have no tensor, and it lets ``load`` tell a complete file from a
  damaged or foreign one;
- any metadata the caller adds (a deployment client adds its run id and client name).

The file is written to a temporary file in the same folder, flushed to disk and renamed over the
old one, so a crash while saving leaves the previous file whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from fedloom.errors import DeploymentError

State = dict[str, np.ndarray]

FORMAT, FORMAT_VERSION = "fedloom.client_state", "1"
_RESERVED = ("format", "format_version", "keep_previous", "versions")


class ClientStateFileError(DeploymentError):
    """A client state file cannot be read: it is damaged, or it is not a fedloom client state file.

    A ``DeploymentError``: the client that owns the file stops with the message, which names the
    file and what to do, instead of quietly starting from zero state.
    """


@dataclass
class _Versions:
    rounds: list[int] = field(default_factory=list)
    states: list[State] = field(default_factory=list)


class ClientStateStore:
    """Client state by client id and the round that wrote it.

    ``keep_previous``: also keep the version before the newest, so a round that runs again starts
    from the state it first started from (a deployment client); a simulation keeps one version.
    ``save``/``load`` keep the whole store in one safetensors file (layout in the module
    docstring), so a client process that restarts goes on from where it stopped.
    """

    def __init__(self, keep_previous: bool = False) -> None:
        self.keep_previous = keep_previous
        self._clients: dict[int, _Versions] = {}

    def get(self, client_id: int, round_num: int) -> State:
        """A copy of the newest state written before ``round_num`` (empty if there is none)."""
        versions = self._clients.get(client_id)
        if versions is None:
            return {}
        for r, state in zip(reversed(versions.rounds), reversed(versions.states), strict=True):
            if r < round_num:
                return {k: v.copy() for k, v in state.items()}
        return {}

    def put(self, client_id: int, round_num: int, state: State) -> None:
        """Record the state that round ``round_num`` left; later versions are superseded."""
        if not state and client_id not in self._clients:
            return  # stateless clients (plain FedAvg) cost nothing
        versions = self._clients.setdefault(client_id, _Versions())
        keep = [i for i, r in enumerate(versions.rounds) if r < round_num]
        keep = keep[-1:] if self.keep_previous else []
        versions.rounds = [versions.rounds[i] for i in keep] + [round_num]
        versions.states = [versions.states[i] for i in keep] + [dict(state)]
        if not state and not keep:
            del self._clients[client_id]

    def __contains__(self, client_id: int) -> bool:
        return client_id in self._clients

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def nbytes(self) -> int:
        """Bytes of every array held."""
        return sum(a.nbytes for v in self._clients.values() for s in v.states for a in s.values())

    def rounds(self, client_id: int) -> list[int]:
        """The rounds that wrote the versions kept for ``client_id``, oldest first."""
        versions = self._clients.get(client_id)
        return list(versions.rounds) if versions is not None else []

    def client_ids(self) -> list[int]:
        """The clients that have state, in ascending order."""
        return sorted(self._clients)

    def save(self, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
        """Write every version of every client to the safetensors file ``path``, atomically.

        ``metadata``: extra string entries for the file's header (a deployment client's run id
        and name); the names ``format``, ``format_version``, ``keep_previous`` and ``versions`` are
        the store's own. The arrays are written to a temporary file in the same folder, flushed
        to disk, and renamed over ``path``: a crash at any point leaves the old file or the new
        one, never a half-written one. The file is readable by its owner only (the temporary
        file's mode), as client state can say something about the client's data.
        """
        path = Path(path)
        extra = dict(metadata or {})
        clash = sorted(set(extra) & set(_RESERVED))
        if clash:
            raise ValueError(f"metadata names {clash} are the client state file's own")
        tensors: dict[str, np.ndarray] = {}
        layout: dict[str, list[list[Any]]] = {}
        for cid in sorted(self._clients):
            versions = self._clients[cid]
            layout[str(cid)] = []
            for r, state in zip(versions.rounds, versions.states, strict=True):
                layout[str(cid)].append([r, list(state)])
                for key, value in state.items():
                    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)
                    tensors[f"c{cid}/r{r}/{key}"] = np.require(value, requirements="C")
        header = {
            **extra,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "keep_previous": "true" if self.keep_previous else "false",
            "versions": json.dumps(layout),
        }
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            save_file(tensors, tmp_name, metadata=header)
            with open(tmp, "rb") as fh:  # the data is written; make it durable before the rename
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | Path) -> ClientStateStore:
        """The store saved in ``path``. ``ClientStateFileError`` if the file is damaged or is not
        a client state file; the message names the file and says to delete it to start from
        zero state."""
        return cls.load_with_metadata(path)[0]

    @classmethod
    def load_with_metadata(cls, path: str | Path) -> tuple[ClientStateStore, dict[str, str]]:
        """The store saved in ``path`` and the extra metadata ``save`` was given with it."""
        path = Path(path)
        try:
            with safe_open(str(path), framework="np") as fh:
                header: dict[str, str] = dict(fh.metadata() or {})
                arrays = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (not iterable)
        except FileNotFoundError:
            raise
        except (SafetensorError, OSError, ValueError) as exc:
            raise _unreadable(path, f"it is not a readable safetensors file: {exc}") from exc
        if header.get("format") != FORMAT:
            raise _unreadable(path, "it is a safetensors file, but not one of fedloom client state")
        if header.get("format_version") != FORMAT_VERSION:
            raise _unreadable(
                path,
                f"it has format version {header.get('format_version')!r}; this fedloom reads "
                f"version {FORMAT_VERSION}",
            )
        if header.get("keep_previous") not in ("true", "false"):
            raise _unreadable(path, "its keep_previous entry is missing or not true/false")
        store = cls(keep_previous=header["keep_previous"] == "true")
        try:
            store._clients = _versions_from(header.get("versions", ""), arrays)
        except (ValueError, TypeError) as exc:
            raise _unreadable(path, f"its list of versions does not fit its arrays: {exc}") from exc
        extra = {k: v for k, v in header.items() if k not in _RESERVED}
        return store, extra


def _versions_from(text: str, arrays: dict[str, np.ndarray]) -> dict[int, _Versions]:
    """The versions the ``versions`` metadata lists, each with its arrays taken out of
    ``arrays``; raises if the list is malformed, names an array the file lacks, or leaves an
    array unclaimed (the file is damaged or was written by something else)."""
    layout = json.loads(text)
    if not isinstance(layout, dict):
        raise ValueError("it is not a JSON object")
    clients: dict[int, _Versions] = {}
    for cid_text, entries in layout.items():
        cid = int(cid_text)
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"client {cid} has no list of versions")
        versions = _Versions()
        for r, keys in entries:
            if not isinstance(r, int) or (versions.rounds and r <= versions.rounds[-1]):
                raise ValueError(f"client {cid}'s rounds are not ascending integers")
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError(f"client {cid}'s round {r} keys are not a list of names")
            if len(set(keys)) != len(keys):
                raise ValueError(f"client {cid}'s round {r} lists a key twice")
            names = [f"c{cid}/r{r}/{k}" for k in keys]
            lacking = [n for n in names if n not in arrays]
            if lacking:
                raise ValueError(f"it lacks the arrays {lacking[:5]}")
            versions.rounds.append(r)
            versions.states.append({k: arrays.pop(n) for k, n in zip(keys, names, strict=True)})
        clients[cid] = versions
    if arrays:
        raise ValueError(f"no version lists the arrays {sorted(arrays)[:5]}")
    return clients


def _unreadable(path: Path, why: str) -> ClientStateFileError:
    return ClientStateFileError(
        f"cannot load the client state file {path}: {why}. Restore it from a backup if there is "
        f"one, or delete {path} to start this client's state from zero (its SCAFFOLD control "
        "variate or error-feedback residuals then restart as in round 1)"
    )


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
