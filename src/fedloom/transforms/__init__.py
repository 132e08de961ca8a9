"""Update transforms in the style of optax: ``init(size) -> state`` and
``apply(vec, state, ctx) -> (vec, state)``, combined with ``chain``."""

from fedloom.transforms.base import (
    NORMAL,
    STATE_PREFIX,
    TRANSFORMS,
    Transform,
    TransformState,
    apply_to_rows,
    build_pipeline,
    chain,
    register_transform,
)
from fedloom.transforms.clip import clip_by_l2_norm
from fedloom.transforms.noise import gaussian_noise

__all__ = [
    "NORMAL",
    "STATE_PREFIX",
    "TRANSFORMS",
    "Transform",
    "TransformState",
    "apply_to_rows",
    "build_pipeline",
    "chain",
    "clip_by_l2_norm",
    "gaussian_noise",
    "register_transform",
]
