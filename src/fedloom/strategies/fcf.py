"""Federated collaborative filtering: FedAvg over item rows, each row averaged over its raters.

Ammad-ud-din, Ivannikova, Khan, Oyomno, Fu, Tan and Flanagan, "Federated Collaborative Filtering
for Privacy-Preserving Personalized Recommendation System", arXiv:1901.09888, 2019.

The global model is a matrix factorisation's item side: every tensor has one row per item (item
factors ``(I, k)``, item biases ``(I,)``). The user side stays on the clients
(:mod:`fedloom.client.fcf`). A user rates a few dozen of thousands of items, and its update moves
only their rows, so each client uploads only the rows it touched: a ``bitmask`` over the items and
the values of those rows (``Upload.rows``, :func:`fedloom.core.task.encode_row_sparse`). The bytes
up scale with the ratings a client holds, not with the catalogue.

Aggregation, per row: a row's update is the mean of the updates of the clients of the round that
touched it, and a row nobody touched does not move:

    delta_i = sum_{u touched i} delta_{u,i} / |{u touched i}|

A client counts once per row whatever its number of examples: a user rates an item at most once,
so this is the mean over the round's ratings of that item. The plain mean over all clients would
shrink every row by the share of clients that did not rate it (a niche movie would barely move);
the paper's sum (``Q <- Q - gamma sum_u grad_u``) instead steps a popular movie as far as all its
raters together, which needs an item learning rate small enough for the most popular row. The
per-row mean lets one learning rate serve every row, and ``strategy.server_lr`` scales it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from fedloom.core.task import Result, RowSparse, Task, Upload, touched_rows
from fedloom.strategies.base import RoundContext, RoundPlan, Strategy

log = logging.getLogger("fedloom")

__all__ = ["FederatedCF", "RowMean"]


class RowMean:
    """The per-row mean of row-sparse updates over the clients that touched each row.

    Streams: a float64 sum of the updates and a count per row, O(model) whatever the clients.
    """

    def __init__(self, rows: RowSparse) -> None:
        self.rows = rows
        self._sum = np.zeros(rows.size, np.float64)
        self._touches = np.zeros(rows.rows, np.int64)
        self.count = 0

    def add(self, vec: np.ndarray, touched: np.ndarray) -> None:
        """One client's dense update (zero outside ``touched``) and its row flags."""
        self._sum += vec
        self._touches += touched
        self.count += 1

    def finish(self) -> np.ndarray:
        """The mean per row over the clients that touched it; zero for rows nobody touched."""
        per_value = np.concatenate([np.repeat(self._touches, w) for w in self.rows.widths])
        mean: np.ndarray = (self._sum / np.maximum(per_value, 1)).astype(np.float32)
        return mean


@dataclass
class FederatedCF(Strategy):
    """FedAvg whose clients upload only the item rows they touched, averaged per row."""

    name = "fcf"
    mode = "train"
    needs_individual_updates = (
        "fcf averages each item row over the clients that touched it, which it reads from each "
        "upload's row flags"
    )

    def configure_fit(self, ctx: RoundContext) -> list[Task]:
        if ctx.mask is not None:
            raise ValueError("row-sparse uploads and a pruning mask cannot be combined")
        rows = RowSparse.of(ctx.spec)
        codec = (ctx.upload_codec or ctx.codec).name
        upload = Upload(codec, rows.size, rows=rows)
        return [replace(task, upload=upload) for task in super().configure_fit(ctx)]

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        tasks = self.configure_fit(ctx)
        agg = RowMean(RowSparse.of(ctx.spec))

        def on_result(result: Result, vec: np.ndarray | None) -> None:
            upload = result.task.upload
            if vec is None or result.payload is None or upload is None or upload.rows is None:
                raise ValueError("a fit result arrived without a row-sparse update")
            # validated already: the payload is a row-sparse upload of these rows
            agg.add(vec, touched_rows(result.payload, upload.rows))

        yield from ctx.channel.individual(
            tasks, [ctx.model], on_result, self.needs_individual_updates or ""
        )
        if agg.count < self.min_fit_clients:
            log.error(
                "only %d usable updates, min_fit_clients is %d; the global model is unchanged",
                agg.count,
                self.min_fit_clients,
            )
            return None
        return agg.finish()

    def pseudo_gradient(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        return -aggregate
