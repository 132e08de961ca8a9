"""Every update is checked before it can touch the global model."""

from __future__ import annotations

import numpy as np

from fedloom.core.task import GlobalParams, Result
from fedloom.errors import UpdateRejected


def decode_update(
    result: Result, global_params: GlobalParams, max_bytes: int | None = None
) -> np.ndarray:
    """The update vector of a fit result, or ``UpdateRejected`` saying why it cannot be used.

    Checks: a payload is present and within ``max_bytes``, it decodes to exactly the model's size,
    every value is finite, and ``num_examples`` is a non-negative count.
    """
    if result.payload is None:
        raise UpdateRejected("the result carries no update")
    if max_bytes is not None and len(result.payload) > max_bytes:
        raise UpdateRejected(f"update is {len(result.payload)} bytes, over the cap of {max_bytes}")
    if result.num_examples < 0:
        raise UpdateRejected(f"num_examples must be >= 0, got {result.num_examples}")
    try:
        vec = global_params.codec.decode(result.payload, global_params.spec.size)
    except ValueError as exc:
        raise UpdateRejected(f"update does not match the model: {exc}") from None
    if not np.isfinite(vec).all():
        bad = int((~np.isfinite(vec)).sum())
        raise UpdateRejected(f"update has {bad} non-finite values (NaN or inf)")
    return vec
