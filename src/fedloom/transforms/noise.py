"""Add Gaussian noise ``N(0, std^2)`` to every coordinate of a client's update.

With ``clip`` before it, the Gaussian mechanism of local differential privacy: each client
releases only its clipped update plus noise (Dwork and Roth, "The Algorithmic Foundations of
Differential Privacy", 2014, Appendix A). The draws come from the row's own generator
(``apply_to_rows``'s ``rngs``; seeded per seed, round and client by the callers), so a client adds
the same noise on every engine, and nobody else's draws change it. Seeded streams are reproducible
by design: whoever knows the run's seed can recompute the noise (README, "Differential privacy").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedloom.errors import ConfigError
from fedloom.transforms.base import NORMAL, Transform, TransformState, register_transform


def gaussian_noise(std: float) -> Transform:
    """Add ``std`` times a standard-normal draw to each coordinate; stateless."""
    if not std >= 0:
        raise ConfigError(f"gaussian_noise: std must be >= 0, got {std}")
    scale = float(std)

    def init(size: int) -> TransformState:
        return {}

    def apply(
        vec: torch.Tensor, state: TransformState, ctx: Mapping[str, Any]
    ) -> tuple[torch.Tensor, TransformState]:
        noised = vec.double() + scale * state[NORMAL][0].double()
        return noised.to(vec.dtype), {}

    return Transform(init, apply, draws=1)


register_transform("gaussian_noise", gaussian_noise)
