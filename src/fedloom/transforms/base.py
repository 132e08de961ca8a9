"""The transform interface, ``chain``, and transforms named in a task's config.

A transform is two pure functions over one client's flat update (a 1-D float tensor):

    init(size) -> state                      named tensors (residuals, RNG keys), possibly empty
    apply(vec, state, ctx) -> (vec, state)   ctx: plain Python values (the round, the client id)

Written for one client, a transform runs eagerly on a client and under ``torch.func.vmap`` over a
whole cohort in the vectorized engine, so anything that reduces (a norm) must reduce over ``vec``
alone. State is explicit: the engine keeps it in client state between rounds (checkpointable, and
vectorisable as stacked rows). Order matters: ``chain(clip(1.0), noise(...))`` clips, then adds noise.

Example::

    pipeline = chain(clip_by_l2_norm(1.0))
    state = pipeline.init(vec.numel())
    vec, state = pipeline.apply(vec, state, {"round": 3})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from fedloom.errors import ConfigError

TransformState = dict[str, torch.Tensor]
Init = Callable[[int], TransformState]
Apply = Callable[
    [torch.Tensor, TransformState, Mapping[str, Any]], tuple[torch.Tensor, TransformState]
]


class Transform(NamedTuple):
    """``init`` and ``apply`` of one update transform (see the module docstring)."""

    init: Init
    apply: Apply


def chain(*transforms: Transform) -> Transform:
    """Apply ``transforms`` in order; the state of the i-th lives under ``"i/<name>"``."""

    def init(size: int) -> TransformState:
        out: TransformState = {}
        for i, t in enumerate(transforms):
            out.update({f"{i}/{k}": v for k, v in t.init(size).items()})
        return out

    def apply(
        vec: torch.Tensor, state: TransformState, ctx: Mapping[str, Any]
    ) -> tuple[torch.Tensor, TransformState]:
        new: TransformState = {}
        for i, t in enumerate(transforms):
            prefix = f"{i}/"
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            vec, own = t.apply(vec, own, ctx)
            new.update({prefix + k: v for k, v in own.items()})
        return vec, new

    return Transform(init, apply)


TransformFactory = Callable[..., Transform]
TRANSFORMS: dict[str, TransformFactory] = {}


def register_transform(name: str, factory: TransformFactory) -> None:
    """Make ``{"name": name, **kwargs}`` usable in a task's ``transforms`` config."""
    TRANSFORMS[name] = factory


def build_pipeline(specs: Sequence[Mapping[str, Any]]) -> Transform:
    """The chain a task's config names: ``[{"name": "clip", "max_norm": 1.0}, ...]``."""
    built = []
    for spec in specs:
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
        if name not in TRANSFORMS:
            raise ConfigError(f"unknown transform {name!r}; choose one of {sorted(TRANSFORMS)}")
        try:
            built.append(TRANSFORMS[name](**kwargs))
        except TypeError as exc:
            raise ConfigError(f"transform {name!r}: {exc}") from None
    return chain(*built)
