"""The client's stages of secure aggregation (``fedloom.secagg.protocol``), for every engine and
the deployment client: importing this module registers them.

Stages 1, 2 and 4 exchange keys and shares and need no model; stage 3 is an ordinary ``fit`` task
whose update, after the task's transforms (client-side clipping and noise for differential
privacy), becomes the client's contribution to the round's sums (``core.summands``: the same
rule the plain channel runs on the server) and is masked by ``client_mask`` instead of being
encoded by a codec. The round's secrets
live in the client's state between stages and are dropped after the last.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedloom.client.base import Client, ClientContext
from fedloom.client.execute import (
    StageOutput,
    register_message_encoder,
    register_stage,
)
from fedloom.client.state import State
from fedloom.core.params import Params
from fedloom.core.summands import SUM, contribution
from fedloom.core.task import Task
from fedloom.secagg import (
    ADVERTISE,
    CONFIG_KEY,
    SHARE,
    UNMASK,
    client_advertise,
    client_mask,
    client_share,
    client_unmask,
)


def _advertise(client: Client, task: Task, params: Params, context: ClientContext) -> StageOutput:
    return StageOutput(None, 0, {}, message=client_advertise(context.state, task.config))


def _share(client: Client, task: Task, params: Params, context: ClientContext) -> StageOutput:
    return StageOutput(
        None, 0, {}, message=client_share(context.state, task.config, task.client_id)
    )


def _unmask(client: Client, task: Task, params: Params, context: ClientContext) -> StageOutput:
    return StageOutput(
        None, 0, {}, message=client_unmask(context.state, task.config, task.client_id)
    )


def _mask(
    update: np.ndarray, num_examples: int, metrics: Mapping[str, float], state: State, task: Task
) -> bytes:
    if SUM not in task.config:
        raise ValueError("the masked-input task names no sum plan (config 'sum')")
    values, weights = contribution(update, num_examples, metrics, task.config[SUM])
    bound = float(task.config.get(CONFIG_KEY, {}).get("clip_range", np.inf))
    beyond = np.flatnonzero(np.abs(values) > bound)
    if beyond.size:
        # the fixed-point encoding would clip them, and the sum would be wrong without a word
        raise ValueError(
            f"{beyond.size} of the {values.size} values of this client's contribution lie beyond "
            f"secure_aggregation.clip_range={bound:g} (the largest is "
            f"{float(np.abs(values).max()):.4g} in its term's units); raise "
            "secure_aggregation.clip_range"
        )
    return client_mask(values, weights, state, task.config, task.client_id)


register_stage(ADVERTISE, _advertise)
register_stage(SHARE, _share)
register_stage(UNMASK, _unmask)
register_message_encoder(CONFIG_KEY, _mask)
