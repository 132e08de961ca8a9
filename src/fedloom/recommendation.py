"""Federated recommendation in a simulation: ``dataset.name: movielens`` with ``model.name: mf``
(the default ``model.name: auto`` picks it for movielens).

The federation (one FCF client per user, the item model, the strategy, federated evaluation)
is the ``ratings`` app kind, :mod:`fedloom.app.ratings`. Evaluation reports ``fed_rmse``
(pooled over every held-out rating), ``fed_mae``, ``fed_loss`` (MSE) and
``fed_hit_rate_at_10`` / ``fed_ndcg_at_10``, pooled the same way (users weighted by their
held-out ratings); ``fed_<metric>_mean`` and the other ``fed_<metric>_<stat>`` keys are their
spread over users.

How the config maps: ``model.rank`` is the factor size; ``client.epochs`` the local full-batch
epochs, ``client.lr`` the learning rate of the user's and the item rows' steps,
``client.weight_decay`` the L2 penalty; ``dataset.test_fraction`` the share of each user's latest
ratings held out and ``dataset.max_clients`` a seeded sample of users. Settings that cannot apply
to this client are refused with the key to change (``check_config``); ``client.batch_size`` is
not used (every step is full-batch) and ``eval.client_test_fraction`` neither (the held-out
ratings are each user's latest, by time).

Baselines (``fedloom run --baselines local,central``, ``baseline``): the same budget, through the
same coordinator and strategy, evaluated the same way: ``local`` trains each user alone (a
federation of one) and pools their metrics over users as federated evaluation pools clients;
``central`` is one client holding every user (all user factors on one machine), whose epoch is
the full-batch step on the pooled ratings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedloom.app.ratings import RatingsApp, check_config, fcf_strategy
from fedloom.client.fcf import FCFClient, UserRatings
from fedloom.config import Config, EngineConfig, EvalConfig
from fedloom.errors import ConfigError
from fedloom.metrics import pooled_metrics
from fedloom.server.assemble import make_coordinator
from fedloom.server.coordinator import Population, RoundListener
from fedloom.simulation import run_federation
from fedloom.tracking.summary import final_metrics

__all__ = ["POOLED_KEYS", "RecommendationSimulation", "check_config", "fcf_strategy", "run"]

POOLED_KEYS = ("fed_loss", "fed_rmse", "fed_mae", "fed_hit_rate_at_10", "fed_ndcg_at_10")
"""The metrics a run reports pooled over every held-out rating, and its baselines too."""


class RecommendationSimulation(RatingsApp):
    """A MovieLens federation (``RatingsApp``) with the local-only and centralised baselines."""

    # -- baselines -----------------------------------------------------------------------------

    def baseline(self, kind: str, *, quiet: bool = True) -> dict[str, Any]:
        """The final pooled metrics (``POOLED_KEYS``) of baseline ``kind`` with ``seconds`` and,
        for ``local``, ``clients`` (the users trained alone)."""
        started = time.perf_counter()
        if kind == "central":
            everyone = self._train_alone(0, self.users, self.client_of(self.users))
            out: dict[str, Any] = {k: everyone[k] for k in POOLED_KEYS if k in everyone}
        elif kind == "local":
            finals = []
            alone = [u for u in self.users if len(u.ratings_train)]
            for i, user in enumerate(alone):
                if not quiet:
                    print(
                        f"local-only baseline: user {i + 1}/{len(alone)}", end="\r", file=sys.stderr
                    )
                final = self._train_alone(user.user, [user], self.client(user.user))
                metrics = {k.removeprefix("fed_"): final[k] for k in POOLED_KEYS if k in final}
                finals.append((len(user.ratings_test), metrics))
            out = {f"fed_{k}": v for k, v in pooled_metrics(finals).items()}
            out["clients"] = len(finals)
        else:
            raise ConfigError(f"unknown baseline {kind!r}; choose one of local, central")
        out["seconds"] = time.perf_counter() - started
        return out

    def _train_alone(
        self, cid: int, users: Sequence[UserRatings], client: FCFClient
    ) -> dict[str, Any]:
        """``rounds`` rounds of a federation of the one client ``client`` (holding ``users``),
        evaluated after the last."""
        cfg = self.cfg.model_copy(
            update={
                "strategy": self.cfg.strategy.model_copy(
                    update={"fraction_fit": 1.0, "min_fit_clients": 1}
                ),
                "eval": EvalConfig(every=self.cfg.rounds, federated=True),
                "engine": EngineConfig(name="sequential", threads=self.cfg.engine.threads),
            }
        )
        tested = any(len(u.ratings_test) for u in users)
        coordinator = make_coordinator(
            cfg,
            strategy=self.strategy(cfg),
            client_fn=lambda _: client,
            spec=self.spec,
            init_params=self.init_params,
            population=Population(
                {cid: sum(len(u.ratings_train) for u in users)}, {cid} if tested else set()
            ),
            central_eval=None,
        )
        try:
            history = coordinator.run(cfg.rounds)
        finally:
            coordinator.engine.close()
        return final_metrics(history)


def run(
    cfg: Config,
    out_dir: str | Path,
    *,
    quiet: bool = False,
    listeners: Sequence[RoundListener] = (),
) -> dict[str, Any]:
    """``fedloom.simulation.run`` for ``dataset.name: movielens`` (which ``run`` itself builds
    through the ``ratings`` app kind): the run's results folder and summary."""
    started = time.perf_counter()
    federation = RecommendationSimulation(cfg).federation()
    return run_federation(
        federation, Path(out_dir), quiet=quiet, started=started, listeners=listeners
    )
