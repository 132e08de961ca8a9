"""MovieLens: federated vs local-only vs centralised matrix factorisation, side by side.

Federated collaborative filtering (fedloom.client.fcf, Ammad-ud-din et al. 2019) runs through the
real coordinator and sequential engine: one FCFClient per user, user factors in the engine's
client state, FedAvg over item-parameter deltas with an unweighted mean and a server learning
rate equal to the clients per round (so the server sums the deltas, as in the paper). The same
rank, learning rates, regulariser and number of gradient steps per user are used by

- local only: each user trains its own copy of the item parameters on its own ratings;
- centralised: full-batch training on the pooled ratings (``central_epoch``), ``rounds * epochs``
  epochs.

All three report the RMSE pooled over every held-out rating (each user's latest 20%), and hit
rate and NDCG at 10 of the held-out movies among all movies a user did not rate in training, averaged
over users.
``fedloom run --baselines`` does not fit here: its central baseline pools the rows into one client
of a model the server can evaluate, and an MF model cannot be evaluated without the user factors.

    PYTHONPATH=src python bench/movielens.py [--rounds 50] [--rank 16] [--epochs 1] [--fraction 1]
"""

from __future__ import annotations

import argparse
import math
import time

from fedloom.aggregators.mean import WeightedMean
from fedloom.client.base import ClientContext, EvalResult
from fedloom.client.fcf import (
    ITEM_BIAS,
    ITEM_FACTORS,
    FCFClient,
    central_epoch,
    init_item_params,
    init_user,
    local_epoch,
)
from fedloom.core.params import ParamSpec
from fedloom.data.movielens import Ratings, load_movielens
from fedloom.engines import SequentialEngine
from fedloom.optim.server import ServerSGD
from fedloom.server.coordinator import Coordinator, Population
from fedloom.strategies.fedavg import FedAvg

Scores = tuple[float, float, float]


def _pooled(results: list[EvalResult]) -> Scores:
    """RMSE pooled over every held-out rating; hit rate and NDCG at 10 averaged over users."""
    sse = sum(ev.metrics["sse"] for ev in results)
    n = sum(ev.num_examples for ev in results)
    ranked = [ev for ev in results if "ndcg_at_10" in ev.metrics]
    hr = sum(ev.metrics["hit_rate_at_10"] for ev in ranked) / len(ranked)
    ndcg = sum(ev.metrics["ndcg_at_10"] for ev in ranked) / len(ranked)
    return math.sqrt(sse / n), hr, ndcg


def federated(r: Ratings, clients: list[FCFClient], a: argparse.Namespace) -> tuple[Scores, float]:
    params = init_item_params(r.num_items, a.rank, a.seed)
    spec = ParamSpec.of(params)
    users = range(len(clients))
    per_round = max(1, math.ceil(a.fraction * len(clients)))
    strategy = FedAvg(
        fraction_fit=a.fraction,
        fraction_evaluate=1.0,
        client_config={"epochs": a.epochs, "lr": a.lr, "user_lr": a.user_lr, "reg": a.reg},
        server_optimizer=ServerSGD(lr=float(per_round)),
        aggregator_factory=lambda: WeightedMean(weighted=False),
    )
    engine = SequentialEngine(lambda cid: clients[cid])
    coordinator = Coordinator(
        strategy=strategy,
        engine=engine,
        spec=spec,
        params=spec.flatten(params),
        population=Population({u: len(clients[u].ratings_train) for u in users}, set(users)),
        seed=a.seed,
        eval_every=a.rounds,
    )
    start = time.perf_counter()
    coordinator.run(a.rounds)
    seconds = time.perf_counter() - start
    final = spec.unflatten(coordinator.params)
    results = [
        c.evaluate(final, {}, ClientContext(state=engine.states.get(u, a.rounds + 1)))
        for u, c in enumerate(clients)
    ]
    return _pooled(results), seconds


def local_only(r: Ratings, clients: list[FCFClient], a: argparse.Namespace) -> tuple[Scores, float]:
    start = time.perf_counter()
    params = init_item_params(r.num_items, a.rank, a.seed)
    results = []
    for u, c in enumerate(clients):
        q, b = params[ITEM_FACTORS].copy(), params[ITEM_BIAS].copy()
        user = init_user(a.rank, a.seed, u, c.ratings_train)
        for _ in range(a.rounds * a.epochs):
            local_epoch(
                user, q, b, c.items_train, c.ratings_train, lr=a.lr, user_lr=a.user_lr, reg=a.reg
            )
        results.append(c.evaluate({ITEM_FACTORS: q, ITEM_BIAS: b}, {}, ClientContext(state=user)))
    return _pooled(results), time.perf_counter() - start


def central(r: Ratings, clients: list[FCFClient], a: argparse.Namespace) -> tuple[Scores, float]:
    start = time.perf_counter()
    params = init_item_params(r.num_items, a.rank, a.seed)
    q, b = params[ITEM_FACTORS].copy(), params[ITEM_BIAS].copy()
    users = [init_user(a.rank, a.seed, u, c.ratings_train) for u, c in enumerate(clients)]
    data = [(c.items_train, c.ratings_train) for c in clients]
    for _ in range(a.rounds * a.epochs):
        central_epoch(users, q, b, data, lr=a.lr, user_lr=a.user_lr, reg=a.reg)
    model = {ITEM_FACTORS: q, ITEM_BIAS: b}
    results = [
        c.evaluate(model, {}, ClientContext(state=user))
        for c, user in zip(clients, users, strict=True)
    ]
    return _pooled(results), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--user-lr", type=float, default=0.5)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="local,federated,central")
    a = p.parse_args()
    r = load_movielens(0.2)
    clients = []
    for u in range(r.num_users):
        items_tr, ratings_tr, items_te, ratings_te = r.user(u)
        clients.append(FCFClient(u, items_tr, ratings_tr, items_te, ratings_te, seed=a.seed))
    print(
        f"MovieLens (dslabs): {r.num_users} users, {r.num_items} movies, "
        f"{len(r.ratings_train)} training / {len(r.ratings_test)} held-out ratings; rank {a.rank}, "
        f"{a.rounds} rounds x {a.epochs} epochs, fraction {a.fraction}, lr {a.lr}, "
        f"user_lr {a.user_lr}, reg {a.reg}"
    )
    runs = {"local": local_only, "federated": federated, "central": central}
    rows = {}
    for name in a.only.split(","):
        (rmse, hr, ndcg), seconds = runs[name](r, clients, a)
        rows[name] = rmse
        print(
            f"{name:10s} RMSE {rmse:.4f}  HR@10 {hr:.4f}  NDCG@10 {ndcg:.4f}  ({seconds:.1f} s)",
            flush=True,
        )
    if "federated" in rows and "central" in rows:
        print(f"federated / central RMSE: {rows['federated'] / rows['central']:.4f}")


if __name__ == "__main__":
    main()
