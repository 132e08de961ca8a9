"""Transforms: clipping by L2 norm, chains, config-built pipelines, and one client's function
vmapped over a cohort."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch.func import vmap

from fedloom.errors import ConfigError
from fedloom.transforms import Transform, TransformState, build_pipeline, chain, clip_by_l2_norm


def test_clip_scales_long_updates_to_the_bound_and_leaves_short_ones() -> None:
    clip = clip_by_l2_norm(5.0)

    long, _ = clip.apply(torch.tensor([6.0, 8.0]), {}, {})  # norm 10 -> 5
    short, _ = clip.apply(torch.tensor([3.0, 0.0]), {}, {})

    assert long.tolist() == [3.0, 4.0]
    assert short.tolist() == [3.0, 0.0]


def counter() -> Transform:
    """Adds how often it ran: a transform with state."""

    def init(size: int) -> TransformState:
        return {"count": torch.zeros(())}

    def apply(
        vec: torch.Tensor, state: TransformState, ctx: Mapping[str, Any]
    ) -> tuple[torch.Tensor, TransformState]:
        count = state["count"] + 1
        return vec + count, {"count": count}

    return Transform(init, apply)


def test_a_chain_applies_in_order_and_keeps_each_transforms_state_apart() -> None:
    pipeline = chain(counter(), clip_by_l2_norm(1.0), counter())
    state = pipeline.init(2)
    assert sorted(state) == ["0/count", "2/count"]

    vec, state = pipeline.apply(torch.tensor([2.0, -1.0]), state, {})  # [3, 0] -> [1, 0] -> [2, 1]
    vec, state = pipeline.apply(vec, state, {})  # [4, 3] -> [0.8, 0.6] -> [2.8, 2.6]

    assert torch.allclose(vec, torch.tensor([2.8, 2.6]))
    assert state["0/count"].item() == 2 and state["2/count"].item() == 2


def test_one_clients_transform_vmapped_over_a_cohort_gives_each_row_its_own_result() -> None:
    clip = build_pipeline([{"name": "clip", "max_norm": 1.0}])
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4]])

    out, _ = vmap(lambda v: clip.apply(v, {}, {}))(rows)

    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


def test_pipelines_from_config_name_known_transforms_with_valid_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown transform 'topk'"):
        build_pipeline([{"name": "topk"}])
    with pytest.raises(ConfigError, match="transform 'clip'"):
        build_pipeline([{"name": "clip", "bound": 1.0}])
    with pytest.raises(ConfigError, match="max_norm must be > 0"):
        build_pipeline([{"name": "clip", "max_norm": 0}])
