"""Federated recommendation: ``dataset.name: movielens`` with matrix factorisation (``model.name:
mf``, the default ``auto`` for it).

One client per MovieLens user (:mod:`fedloom.data.movielens`), each a
:class:`fedloom.client.fcf.FCFClient` whose user factor lives in the engine's client state; the
server model is the item factors and biases, trained by :class:`fedloom.strategies.fcf.FederatedCF`
(FedAvg over the item rows each client touched, uploaded row-sparse and averaged per row). The
server holds no user factor, so it cannot evaluate: evaluation is federated (``eval.federated``).

``check_config`` refuses, naming the key, the settings the FCF client cannot honour. In a
deployment the server builds the same item model and strategy (``ratings_server``) and each client
process is one user's ``FCFClient`` (``ratings_client``). The baselines are
:mod:`fedloom.recommendation`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedloom.app.federation import Federation
from fedloom.app.models import recorded_config
from fedloom.app.registry import AppKind
from fedloom.client.fcf import FCFClient, UserRatings, init_item_params
from fedloom.config import Config
from fedloom.core.params import ParamSpec
from fedloom.data.movielens import Ratings, load_movielens
from fedloom.errors import ConfigError, DeploymentError
from fedloom.optim import make_server_optimizer
from fedloom.server.coordinator import Coordinator, Population, RoundListener
from fedloom.strategies import Strategy
from fedloom.strategies.fcf import FederatedCF

__all__ = ["RATINGS", "RatingsApp", "check_config", "fcf_strategy"]


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


class RatingsApp:
    """A MovieLens federation from a Config: users, initial item parameters, clients and strategy.
    With ``deployment``, the parts a deployment's server or client takes (``engine`` does not
    apply)."""

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

    def federation(self) -> Federation:
        """Every user's client, simulated; evaluation is federated."""
        return Federation(
            cfg=self.cfg,
            spec=self.spec,
            init_params=self.init_params,
            strategy=self.strategy(),
            population=self.population(),
            client_fn=self.client,
            data=self.data,
            recorded=recorded_config(self.cfg, "mf"),
        )

    def coordinator(self, listeners: Sequence[RoundListener] = ()) -> Coordinator:
        """The coordinator of a run of this federation."""
        return self.federation().coordinator(listeners)

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
        """The ``summary.json`` of a run of this federation."""
        return self.federation().summary(history, wall_seconds, out)


def ratings_server(cfg: Config, eval_data: Path | None, strategy: Strategy) -> Federation:
    """The item side of a movielens run's matrix factorisation, as ``fedloom run`` builds it."""
    if eval_data is not None:
        raise ConfigError(
            f"--eval-data {eval_data}: dataset.name=movielens is evaluated on the clients "
            "(eval.federated), because the server holds no user factor; drop --eval-data"
        )
    app = RatingsApp(cfg, deployment=True)  # refuses, naming the key, what FCF cannot do
    return Federation(
        cfg=cfg,
        spec=app.spec,
        init_params=app.init_params,
        strategy=strategy,
        population=Population(num_examples={}),
        data=app.data,
        source="mf from the config (item factors and item biases)",
        recorded=recorded_config(cfg, "mf"),
        eval_source="off (the server holds no user factor; evaluation is federated)",
    )


def ratings_client(cfg: Config, index: int, count: int) -> FCFClient:
    """User ``index``'s client of a movielens run whose users number ``count``."""
    app = RatingsApp(cfg, deployment=True)
    users = app.ratings.num_users
    if count != users:
        raise DeploymentError(
            f"--partition {index}/{count}: movielens has one client per user, and this run has "
            f"{users} users (dataset.max_clients={cfg.dataset.max_clients}); give --partition "
            f"i/{users} with i in 0..{users - 1}"
        )
    return app.client(index)


def _strategy(cfg: Config) -> Strategy:
    check_config(cfg, deployment=True)
    return fcf_strategy(cfg)


RATINGS = AppKind(
    name="ratings",
    datasets=frozenset({"movielens"}),
    simulation=lambda cfg: RatingsApp(cfg).federation(),
    server=ratings_server,
    client=ratings_client,
    strategy=_strategy,
    own_model=(
        "dataset.name=movielens trains the config's matrix factorisation (model.name: mf), "
        "whose user factors stay on the clients"
    ),
)
"""MovieLens: one client per user, matrix factorisation with the user factors on the clients."""
