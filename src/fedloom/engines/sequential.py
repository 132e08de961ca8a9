"""The sequential engine: clients run one after another in this process.

The reference every other engine is tested against, and the mode for debugging client code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fedloom.client.execute import DecodedBlobs
from fedloom.client.state import ClientStateStore
from fedloom.core.task import Blobs, Result, Task
from fedloom.engines.base import ClientFn, run_one


class SequentialEngine:
    name = "sequential"

    def __init__(self, client_fn: ClientFn) -> None:
        self.client_fn = client_fn
        self.states = ClientStateStore()
        # Every client in this process reads one decoded copy of each blob (decoded once per hash).
        self._decoded = DecodedBlobs()

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        for task in tasks:
            yield run_one(self.client_fn, task, blobs, self.states, self._decoded)

    def close(self) -> None:
        self._decoded.clear()
