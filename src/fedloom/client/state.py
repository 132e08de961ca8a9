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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

State = dict[str, np.ndarray]


@dataclass
class _Versions:
    rounds: list[int] = field(default_factory=list)
    states: list[State] = field(default_factory=list)


class ClientStateStore:
    """Client state by client id and the round that wrote it.

    ``keep_previous``: also keep the version before the newest, so a round that runs again starts
    from the state it first started from (a deployment client); a simulation keeps one version.
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
