"""A two-stage toy protocol, to prove that a round can be several exchanges that depend on each
other, in simulation and over gRPC.

Stage 1 (kind ``update_norm``): each selected client trains and reports only the L2 norm of its
update (no upload). Stage 2 (``fit``): the server sends the same clients a clip bound, the median
of the reported norms, and collects their updates clipped to it by the ``clip`` transform.

Importing this module registers the client half (the ``update_norm`` stage); a deployment client
imports it through its ``--app``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedloom.client.base import Client, ClientContext
from fedloom.client.execute import STAGES, StageOutput, register_stage
from fedloom.core.params import Params
from fedloom.core.task import FIT, Result, Task
from fedloom.strategies import Exchange, FedAvg, RoundContext
from fedloom.strategies.base import RoundPlan

UPDATE_NORM = "update_norm"


def _update_norm(client: Client, task: Task, params: Params, context: ClientContext) -> StageOutput:
    trained = STAGES[FIT](client, task, params, context)
    assert trained.upload is not None
    norm = float(np.linalg.norm(trained.upload.astype(np.float64)))
    return StageOutput(None, trained.num_examples, {UPDATE_NORM: norm})


register_stage(UPDATE_NORM, _update_norm)


@dataclass
class ClipToMedianNorm(FedAvg):
    """FedAvg whose updates are clipped to the median update norm of the round (two stages)."""

    name = "clip_to_median_norm"

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        fit_tasks = self.configure_fit(ctx)
        norms: dict[int, float] = {}
        probe = [replace(t, kind=UPDATE_NORM, upload=None) for t in fit_tasks]
        yield Exchange(
            probe,
            [ctx.model],
            lambda result, vec: norms.__setitem__(
                result.task.client_id, result.metrics[UPDATE_NORM]
            ),
        )
        if not norms:
            return None
        bound = float(np.median(list(norms.values())))
        ctx.state["clip_bound"] = np.array([bound], np.float32)
        clipped = [
            replace(t, config={**t.config, "transforms": [{"name": "clip", "max_norm": bound}]})
            for t in fit_tasks
            if t.client_id in norms
        ]
        agg = self.aggregator()
        agg.begin(ctx.spec.size)

        def add(result: Result, vec: np.ndarray | None) -> None:
            assert vec is not None
            agg.add(vec, result.num_examples)

        yield Exchange(clipped, [ctx.model], add)
        return self.finish(agg)
