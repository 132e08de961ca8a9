"""Federated recommendation in a simulation: ``dataset.name: movielens`` with ``model.name: mf``.

One client per MovieLens user (:mod:`fedloom.data.movielens`), each a
:class:`fedloom.client.fcf.FCFClient` whose user factor lives in the engine's client state; the
server model is the item factors and biases, trained by :class:`fedloom.strategies.fcf.FederatedCF`
(FedAvg over the item rows each client touched, uploaded row-sparse and averaged per row). The
server holds no user factor, so it cannot evaluate: evaluation is federated (``eval.federated``),
on each user's held-out latest ratings, and reports ``fed_rmse`` (pooled over every held-out
rating), ``fed_mae``, ``fed_loss`` (MSE) and ``fed_hit_rate_at_10`` / ``fed_ndcg_at_10``, pooled
the same way (users weighted by their held-out ratings); ``fed_<metric>_mean`` and the other
``fed_<metric>_<stat>`` keys are their spread over users.

How the config maps: ``model.rank`` is the factor size; ``client.epochs`` the local full-batch
epochs, ``client.lr`` the learning rate of the user's and the item rows' steps,
``client.weight_decay`` the L2 penalty; ``dataset.test_fraction`` the share of each user's latest
ratings held out and ``dataset.max_clients`` a seeded sample of users. Settings that cannot apply
to this client are refused with the key to change (``check_config``); ``client.batch_size`` is
not used (every step is full-batch) and ``eval.client_test_fraction`` neither (the held-out
ratings are each user's latest, by time).

In a deployment (``fedloom server`` with ``fedloom client --dataset movielens --partition
u/U``) the server builds the same item model and strategy (``fedloom.server.user_code``,
``fcf_strategy``) and each client process is one user's ``FCFClient`` (``client(u)``), whose row-sparse
uploads travel over gRPC as they do in simulation.

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

from fedloom.client.fcf import FCFClient, UserRatings, init_item_params
from fedloom.config import Config, EngineConfig, EvalConfig
from fedloom.core.params import ParamSpec
from fedloom.data.movielens import Ratings, load_movielens
from fedloom.errors import ConfigError
from fedloom.metrics import pooled_metrics
from fedloom.optim import make_server_optimizer
from fedloom.server.coordinator import Coordinator, Population, RoundListener
from fedloom.simulation import make_coordinator, run_simulation
from fedloom.strategies.fcf import FederatedCF
from fedloom.tracking.summary import final_metrics, summarize

__all__ = ["POOLED_KEYS", "RecommendationSimulation", "check_config", "fcf_strategy", "run"]

POOLED_KEYS = ("fed_loss", "fed_rmse", "fed_mae", "fed_hit_rate_at_10", "fed_ndcg_at_10")
"""The metrics a run reports pooled over every held-out rating, and its baselines too."""


def check_config(cfg: Config, *, deployment: bool = False) -> None:
    """``ConfigError`` naming the key for settings the FCF client or its row-sparse uploads
    cannot honour. In a ``deployment`` client processes run the users, not ``engine``."""
    problems = []
    if cfg.partition.kind != "natural":
        problems.append(
            f"partition.kind={cfg.partition.kind!r}: movielens has one client per user; set "
            "partition.kind: natural (dataset.max_clients samples users)"
        )
    if not cfg.eval.federated:
        problems.append(
            "eval.federated=false: the server holds no user factor and cannot evaluate; "
            "set eval.federated: true"
        )
    if cfg.engine.name == "vectorized" and not deployment:
        problems.append(
            "engine.name='vectorized' vmaps torch models, and the FCF client is numpy matrix "
            "factorisation: set engine.name: sequential (or ray)"
        )
    if cfg.strategy.name != "fedavg" or cfg.strategy.aggregator != "mean":
        problems.append(
            f"strategy.name={cfg.strategy.name!r}, strategy.aggregator="
            f"{cfg.strategy.aggregator!r}: movielens trains with FedAvg over the touched item "
            "rows, averaged per row; set strategy.name: fedavg and strategy.aggregator: mean"
        )
    if cfg.client.optimizer != "sgd" or cfg.client.momentum:
        problems.append(
            "client.optimizer/client.momentum: the FCF client takes plain full-batch gradient "
            "steps; set client.optimizer: sgd and client.momentum: 0"
        )
    if cfg.privacy.mechanism != "none" or cfg.privacy.dp_sgd.enabled:
        problems.append(
            "privacy: differential privacy is not built for row-sparse uploads (the touched rows "
            "themselves would need protecting); set privacy.mechanism: none"
        )
    if cfg.pruning.enabled:
        problems.append("pruning.enabled: a pruning mask and row-sparse uploads do not combine")
    if cfg.transport.error_feedback:
        problems.append("transport.error_feedback: row-sparse uploads keep no residual")
    if cfg.attack is not None:
        problems.append("attack: the simulated attacks poison torch clients' data and updates")
    if problems:
        raise ConfigError("dataset.name=movielens:\n  " + "\n  ".join(problems))


def fcf_strategy(cfg: Config) -> FederatedCF:
    """The strategy of a movielens run (a simulation's, and ``fedloom server``'s): FedAvg over
    the touched item rows, averaged per row, with the config's strategy and client settings."""
    s, c = cfg.strategy, cfg.client
    return FederatedCF(
        fraction_fit=s.fraction_fit,
        min_fit_clients=s.min_fit_clients,
        fraction_evaluate=s.fraction_evaluate,
        client_config={"epochs": c.epochs, "lr": c.lr, "reg": c.weight_decay},
        server_optimizer=make_server_optimizer(
            s.server_optimizer, s.server_lr, s.server_momentum, s.beta1, s.beta2, s.tau
        ),
        sampling=s.sampling,
        max_update_norm=s.max_update_norm,
        max_update_norm_action=s.max_update_norm_action,
    )


class RecommendationSimulation:
    """A MovieLens federation from a Config: users, initial item parameters, clients, strategy
    and coordinator, and the local-only and centralised baselines. With ``deployment``, the parts
    a deployment's server or client takes (``engine`` does not apply)."""

    def __init__(self, cfg: Config, *, deployment: bool = False) -> None:
        check_config(cfg, deployment=deployment)
        self.cfg = cfg
        d = cfg.dataset
        self.ratings: Ratings = load_movielens(d.test_fraction, d.max_clients, cfg.seed)
        r = self.ratings
        self.users = [UserRatings(u, *r.user(u)) for u in range(r.num_users)]
        params = init_item_params(r.num_items, cfg.model.rank, cfg.seed)
        self.spec = ParamSpec.of(params)
        self.init_params = self.spec.flatten(params)

    def client_of(self, users: Sequence[UserRatings]) -> FCFClient:
        """A client holding ``users`` (the centralised baseline's holds every one)."""
        c = self.cfg.client
        return FCFClient(users, epochs=c.epochs, lr=c.lr, reg=c.weight_decay, seed=self.cfg.seed)

    def client(self, cid: int) -> FCFClient:
        """User ``cid``'s client."""
        return self.client_of([self.users[cid]])

    def population(self) -> Population:
        return Population(
            num_examples={u.user: len(u.ratings_train) for u in self.users},
            has_test_data={u.user for u in self.users if len(u.ratings_test)},
        )

    def strategy(self, cfg: Config | None = None) -> FederatedCF:
        return fcf_strategy(cfg or self.cfg)

    def coordinator(self, listeners: Sequence[RoundListener] = ()) -> Coordinator:
        return make_coordinator(
            self.cfg,
            strategy=self.strategy(),
            client_fn=self.client,
            spec=self.spec,
            init_params=self.init_params,
            population=self.population(),
            central_eval=None,
            listeners=listeners,
        )

    @property
    def data(self) -> dict[str, Any]:
        """What the run trains on, for the summary."""
        r = self.ratings
        return {
            "name": "movielens",
            "task": "recommendation",
            "train_examples": len(r.ratings_train),
            "test_examples": len(r.ratings_test),
            "users": r.num_users,
            "items": r.num_items,
        }

    def summary(
        self, history: list[dict[str, Any]], wall_seconds: float, out: Path
    ) -> dict[str, Any]:
        return summarize(
            config=self.cfg.model_dump(mode="json"),
            history=history,
            wall_seconds=wall_seconds,
            out_dir=out,
            num_clients=self.ratings.num_users,
            skipped_clients=self.population().skipped,
            num_parameters=self.spec.size,
            data=self.data,
        )

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
    """``fedloom.simulation.run`` for ``dataset.name: movielens``: the run's results folder and
    summary."""
    started = time.perf_counter()
    sim = RecommendationSimulation(cfg)
    return run_simulation(sim, cfg, Path(out_dir), started, quiet, listeners)
