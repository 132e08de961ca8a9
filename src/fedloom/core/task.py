"""What the coordinator asks of a client (Task) and what comes back (Result).

A task has a kind, so a round can be more than one exchange: ``fit`` and ``evaluate`` today, and the
stages of multi-stage protocols (secure aggregation) later, without changing the round loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedloom.core.codec import Codec
from fedloom.core.params import ParamSpec, content_hash

FIT = "fit"
EVALUATE = "evaluate"


@dataclass(frozen=True)
class Task:
    """One unit of client work in one round."""

    kind: str
    round: int
    client_id: int
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GlobalParams:
    """The global model as it travels down: encoded once per round, cached by content hash."""

    spec: ParamSpec
    codec: Codec
    payload: bytes
    digest: str

    @classmethod
    def encode(cls, spec: ParamSpec, codec: Codec, vec: np.ndarray) -> GlobalParams:
        payload = codec.encode(vec)
        return cls(spec=spec, codec=codec, payload=payload, digest=content_hash(payload))

    def decode(self) -> np.ndarray:
        return self.codec.decode(self.payload, self.spec.size)


@dataclass
class Result:
    """What came back for one task.

    ``payload`` is the encoded update for fit tasks (None for evaluate). ``error`` is set, and the
    rest left empty, when the client failed; the coordinator reports it and carries on.
    """

    task: Task
    num_examples: int = 0
    payload: bytes | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None
