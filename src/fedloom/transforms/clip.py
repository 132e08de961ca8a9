"""Clip an update to a maximum L2 norm: ``vec * min(1, max_norm / ||vec||)``.

The building block of user-level differential privacy (McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models") and of norm-bounding defences against poisoned
updates (Sun et al. 2019, "Can You Really Backdoor Federated Learning?").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedloom.errors import ConfigError
from fedloom.transforms.base import Transform, TransformState, register_transform


def clip_by_l2_norm(max_norm: float) -> Transform:
    """Scale the update down to L2 norm ``max_norm`` when it is longer; stateless."""
    if not max_norm > 0:
        raise ConfigError(f"clip: max_norm must be > 0, got {max_norm}")
    bound = float(max_norm)

    def init(size: int) -> TransformState:
        return {}

    def apply(
        vec: torch.Tensor, state: TransformState, ctx: Mapping[str, Any]
    ) -> tuple[torch.Tensor, TransformState]:
        norm = torch.linalg.vector_norm(vec.double())
        scale = torch.clamp(bound / torch.clamp(norm, min=1e-30), max=1.0)
        return (vec.double() * scale).to(vec.dtype), state

    return Transform(init, apply)


register_transform("clip", clip_by_l2_norm)
