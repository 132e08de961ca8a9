"""Every upload is checked before it can touch the global model, by the coordinator and, in a
deployment, by the gRPC service as it arrives (one function for both, so they never disagree)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedloom.core.codec import get_codec
from fedloom.core.task import Result, Upload
from fedloom.errors import UpdateRejected


def decode_update(result: Result, max_bytes: int | None = None) -> np.ndarray:
    """The upload vector of a result, or ``UpdateRejected`` saying why it cannot be used.

    Checks, against what the task asked for (``task.upload``: codec and size): a payload is
    present and within the codec's declared size (and ``max_bytes``), it decodes to exactly the
    size the task names, every value is finite, and ``num_examples`` is a non-negative count.
    """
    upload = result.task.upload
    if upload is None:
        raise UpdateRejected(f"a {result.task.kind} task takes no upload")
    if result.payload is None:
        raise UpdateRejected("the result carries no update")
    check_count(result.num_examples)
    declared = upload_cap(upload, max_bytes)
    if len(result.payload) > declared:
        raise UpdateRejected(f"update is {len(result.payload)} bytes, over the cap of {declared}")
    try:
        vec = get_codec(upload.codec).decode(result.payload, upload.size)
    except ValueError as exc:
        raise UpdateRejected(f"update does not match the task: {exc}") from None
    if not np.isfinite(vec).all():
        bad = int((~np.isfinite(vec)).sum())
        raise UpdateRejected(f"update has {bad} non-finite values (NaN or inf)")
    return vec


def upload_cap(upload: Upload, max_bytes: int | None = None) -> int:
    """The most bytes an upload for ``upload`` may take: the codec's declared size, or less."""
    declared = upload.max_bytes()
    return declared if max_bytes is None else min(declared, max_bytes)


def check_count(num_examples: int) -> None:
    if num_examples < 0:
        raise UpdateRejected(f"num_examples must be >= 0, got {num_examples}")


def finite_metrics(metrics: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """The finite metrics, and the names of those left out.

    A metric can be undefined on one client (AUC on a split with one class is NaN): it is left out
    of the aggregate for that client, and the client's other metrics still count.
    """
    kept = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
    return kept, sorted(set(metrics) - set(kept))
