"""The sequential engine: clients run one after another in this process.

The reference every other engine is tested against, and the mode for debugging client code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fedloom.core.params import Params
from fedloom.core.task import GlobalParams, Result, Task
from fedloom.engines.base import ClientFn, execute_task


class SequentialEngine:
    name = "sequential"

    def __init__(self, client_fn: ClientFn) -> None:
        self.client_fn = client_fn
        self._cache: tuple[str, Params] | None = None

    def run(self, tasks: Sequence[Task], global_params: GlobalParams) -> Iterator[Result]:
        params = self._decoded(global_params)
        for task in tasks:
            try:
                client = self.client_fn(task.client_id)
            except Exception as exc:  # a broken client factory fails that client only
                yield Result(task, error=f"{type(exc).__name__}: {exc}")
                continue
            yield execute_task(client, task, params, global_params)

    def _decoded(self, global_params: GlobalParams) -> Params:
        # In one process every client shares the decoded model; decode once per content hash.
        if self._cache is None or self._cache[0] != global_params.digest:
            params = global_params.spec.unflatten(global_params.decode())
            self._cache = (global_params.digest, params)
        return self._cache[1]

    def close(self) -> None:
        self._cache = None
