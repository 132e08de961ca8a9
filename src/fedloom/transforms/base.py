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

import numpy as np
import torch
from torch.func import vmap

from fedloom.errors import ConfigError

TransformState = dict[str, torch.Tensor]
Init = Callable[[int], TransformState]
Apply = Callable[
    [torch.Tensor, TransformState, Mapping[str, Any]], tuple[torch.Tensor, TransformState]
]


class Transform(NamedTuple):
    """``init`` and ``apply`` of one update transform (see the module docstring).

    ``draws``: how many standard-normal vectors of the update's size ``apply`` consumes. They
    arrive as ``state[NORMAL]`` (shape ``(draws, size)``), drawn by the caller from the row's own
    generator (``apply_to_rows``'s ``rngs``), because a random call inside ``vmap`` could not give
    each client the numbers it draws eagerly.
    """

    init: Init
    apply: Apply
    draws: int = 0


NORMAL = "normal"
"""The state key under which a transform with ``draws`` receives its standard-normal draws."""


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
        drawn = 0
        for i, t in enumerate(transforms):
            prefix = f"{i}/"
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if t.draws:
                own[NORMAL] = state[NORMAL][drawn : drawn + t.draws]
                drawn += t.draws
            vec, own = t.apply(vec, own, ctx)
            new.update({prefix + k: v for k, v in own.items() if k != NORMAL})
        return vec, new

    return Transform(init, apply, sum(t.draws for t in transforms))


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


STATE_PREFIX = "transforms/"
"""Where a pipeline's state lives in a client's (or the server's) state: ``transforms/<name>``."""


def apply_to_rows(
    specs: Sequence[Mapping[str, Any]],
    rows: np.ndarray,
    states: Sequence[dict[str, np.ndarray]],
    ctx: Mapping[str, Any],
    rngs: Sequence[np.random.Generator] | None = None,
) -> np.ndarray:
    """Run the pipeline ``specs`` names over ``rows`` (one client's update each, or the
    server's aggregate) at once with ``vmap``.

    Row ``i``'s transform state is read from ``states[i]`` (initialised on first use) and written
    back to it, under ``STATE_PREFIX``; a pipeline that draws noise draws row ``i``'s from
    ``rngs[i]``. One client is a one-row call, so a client, a vectorized cohort and the server run
    the same code.
    """
    if not specs:
        return rows
    pipeline = build_pipeline(specs)
    if pipeline.draws and (rngs is None or len(rngs) != len(rows)):
        names = [spec.get("name") for spec in specs]
        raise ConfigError(
            f"the transforms {names} draw random noise and need one generator per row here; "
            "noise on the server's aggregate is privacy.mechanism=central's job"
        )
    own = []
    for state in states:
        mine = {
            k.removeprefix(STATE_PREFIX): torch.from_numpy(np.asarray(v))
            for k, v in state.items()
            if k.startswith(STATE_PREFIX)
        }
        own.append(mine or pipeline.init(rows.shape[1]))
    stacked = {k: torch.stack([o[k] for o in own]) for k in own[0]}
    if pipeline.draws:
        assert rngs is not None
        size = rows.shape[1]
        stacked[NORMAL] = torch.from_numpy(
            np.stack(
                [
                    rng.standard_normal(pipeline.draws * size, dtype=np.float32).reshape(-1, size)
                    for rng in rngs
                ]
            )
        )

    def one(vec: torch.Tensor, state: TransformState) -> tuple[torch.Tensor, TransformState]:
        return pipeline.apply(vec, state, ctx)

    out, new = vmap(one)(torch.from_numpy(np.ascontiguousarray(rows)), stacked)
    for i, state in enumerate(states):
        state.update({STATE_PREFIX + k: v[i].numpy().copy() for k, v in new.items()})
    result: np.ndarray = out.numpy()
    return result
