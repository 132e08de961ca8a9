"""IFCA: the Iterative Federated Clustering Algorithm.

Ghosh, Chung, Yin, Ramchandran. "An Efficient Framework for Clustered Federated Learning."
NeurIPS 2020, Algorithm 2 (model averaging).

The server keeps ``k`` cluster models ``theta_1 .. theta_k`` (``strategy.clusters``). In a round,
each selected client estimates its cluster identity ``j = argmin_j F_i(theta_j)``, the mean loss
of each cluster model on its training data, runs local SGD from ``theta_j`` and returns its
update; the server averages the updates of each cluster into that cluster's model (FedAvg per
cluster: ``theta_j <- theta_j + server_lr * mean_n(delta)`` over the clients that chose ``j``).
A cluster no client chose keeps its model.

Here a round is two exchanges of the same clients (DESIGN.md, "Stages and blobs"):

1. ``ifca_select``: the task names all ``k`` cluster models as blobs (``model`` is cluster 0,
   ``cluster<j>`` the others); the client reports its losses and its choice (metric ``cluster``);
2. ``fit``: each client trains its cluster's model (the task's ``model`` blob), so the vectorized
   engine trains the clients of one cluster as one cohort.

The paper's single message carries the same information; the split costs one more round trip in
a deployment (the models are cached by hash, so nothing is downloaded twice).

Federated evaluation (``ifca_evaluate``) sends the ``k`` models too: each client scores the model
of the cluster it estimates on its training data, on its test split. The round record reports
each client's cluster (``clusters``: client id -> cluster for the round's clients, and
``eval_clusters`` for the evaluated ones), the clients per cluster (``cluster<j>_clients``,
``cluster<j>_eval_clients``), and each cluster's mean of every evaluation metric
(``cluster<j>_fed_<metric>_mean``).

Initialisation, a choice beyond the paper (whose analysis assumes initial models near the
clusters' optima): with ``k`` random models one of
them usually fits every client best at first, takes all the updates, and the clusters never
separate (or separate along chance lines and lock there, as each client keeps pulling its cluster
towards itself). So round 1 is a single exchange: every selected client trains the run's initial
model, the server clusters their updates (scaled to unit length) by k-means with seeded k-means++
starts (the updates of clients with different data point different ways), and each cluster's
model becomes the initial model plus its members' mean update. This buffers round 1's updates
(one model-sized vector per client); from round 2 on, IFCA runs as in the paper and streams. A
cluster with no member in round 1 starts from a seeded permutation of the entries of each tensor
of the initial model (a random model with the initial weights' distribution).

Strategy state: the ``k`` models (``ifca/model<j>``), checkpointed with the run and restored on
resume. The run's global model (central evaluation, ``model.safetensors``) is the model of the
cluster that most training examples chose in the round. Server momentum and adaptive server
optimisers have no meaning per cluster here and are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedloom.aggregators import Aggregator, EmptyAggregate
from fedloom.client.base import Client, ClientContext
from fedloom.client.execute import STAGES, StageOutput, register_stage
from fedloom.core.params import Params, ParamSpec
from fedloom.core.summands import RuleOutput, SumPlan, Term, register_rule
from fedloom.core.task import EVALUATE, MODEL, Blob, Result, Task
from fedloom.errors import ConfigError
from fedloom.optim import ServerSGD
from fedloom.strategies.base import (
    Exchange,
    RoundContext,
    RoundPlan,
    StrategyState,
    fairness_metrics,
)
from fedloom.strategies.fedavg import FedAvg

log = logging.getLogger("fedloom")

SELECT = "ifca_select"
"""Task kind of the first stage: the client reports its estimated cluster."""
IFCA_EVALUATE = "ifca_evaluate"
"""Task kind of federated evaluation on the estimated cluster's model."""
CLUSTER = "cluster"
"""The metric that carries a client's estimated cluster (an integer in ``[0, k)``)."""


def cluster_role(j: int) -> str:
    """The blob role of cluster ``j``'s model in a task (cluster 0 travels as the model)."""
    return MODEL if j == 0 else f"cluster{j}"


def state_key(j: int) -> str:
    """The strategy-state name of cluster ``j``'s model."""
    return f"ifca/model{j}"


# -- client half -----------------------------------------------------------------------------


def cluster_losses(
    client: Client, task: Task, params: Params, context: ClientContext
) -> list[float]:
    """``F_i(theta_j)`` for every cluster model the task sends: the client's mean training loss."""
    training_loss = getattr(client, "training_loss", None)
    if training_loss is None:
        raise TypeError(
            f"IFCA picks a cluster by the loss on the client's training data: "
            f"{type(client).__name__} needs a training_loss(params) method (TorchClient has one)"
        )
    k = int(task.config.get("clusters", 0))
    spec = ParamSpec.of(params)
    losses = []
    for j in range(k):
        model = params if j == 0 else spec.unflatten(np.array(context.blobs[cluster_role(j)]))
        losses.append(float(training_loss(model)))
    return losses


def _choice(losses: Sequence[float]) -> int:
    """The cluster with the lowest loss (the lowest index among equals; NaN never wins)."""
    finite = [x if np.isfinite(x) else np.inf for x in losses]
    return int(np.argmin(finite))


def _select(client: Client, task: Task, params: Params, context: ClientContext) -> StageOutput:
    losses = cluster_losses(client, task, params, context)
    metrics = {f"cluster{j}_loss": x for j, x in enumerate(losses) if np.isfinite(x)}
    num_examples = int(getattr(client, "num_examples", 0))
    return StageOutput(None, num_examples, {**metrics, CLUSTER: float(_choice(losses))})


def _evaluate(client: Client, task: Task, params: Params, context: ClientContext) -> StageOutput:
    j = _choice(cluster_losses(client, task, params, context))
    if j:
        params = ParamSpec.of(params).unflatten(np.array(context.blobs[cluster_role(j)]))
    others = {r: v for r, v in context.blobs.items() if not r.startswith("cluster")}
    out = STAGES[EVALUATE](client, task, params, ClientContext(others, context.state))
    out.metrics[CLUSTER] = float(j)
    return out


register_stage(SELECT, _select)
register_stage(IFCA_EVALUATE, _evaluate, evaluation=True)


# -- server half -----------------------------------------------------------------------------


def initial_models(spec: ParamSpec, params: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Cluster 0 at ``params``; cluster ``j > 0`` at each tensor of ``params`` with its entries
    permuted by a generator seeded with (seed, j)."""
    models = [np.array(params, dtype=np.float32, copy=True)]
    for j in range(1, k):
        rng = np.random.default_rng([seed, j, 0x69666361])
        out = models[0].copy()
        for off, size in zip(spec.offsets, spec.sizes, strict=True):
            out[off : off + size] = rng.permutation(out[off : off + size])
        models.append(out)
    return models


def cluster_updates(rows: np.ndarray, k: int, seed: int, iterations: int = 100) -> list[int]:
    """k-means (Lloyd, with k-means++ seeding from a generator seeded by ``seed``) of the rows
    scaled to unit length: each row's cluster, in ``[0, min(k, rows))``. Deterministic; a
    cluster left without rows keeps its centre."""
    n = len(rows)
    if n == 0:
        return []
    k = min(k, n)
    norms = np.linalg.norm(rows.astype(np.float64), axis=1, keepdims=True)
    points = rows.astype(np.float64) / np.where(norms > 0, norms, 1.0)
    rng = np.random.default_rng([seed, 0x6B6D65616E73])
    centres = [points[int(rng.integers(n))]]
    for _ in range(1, k):
        d2 = np.min([((points - c) ** 2).sum(1) for c in centres], axis=0)
        total = d2.sum()
        pick = int(rng.choice(n, p=d2 / total)) if total > 0 else len(centres) % n
        centres.append(points[pick])
    centre = np.stack(centres)
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = ((points[:, None, :] - centre[None, :, :]) ** 2).sum(2).argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                centre[j] = points[labels == j].mean(0)
    return [int(x) for x in labels]


@dataclass
class IFCA(FedAvg):
    """``k`` cluster models, each averaged from the clients that chose it."""

    clusters: int = 2

    name = "ifca"
    label_metrics = (CLUSTER,)

    def private_refusal(self) -> str | None:
        return (
            "strategy.name=ifca's clients report their cluster choice in the clear, a release that "
            "depends on their data and that the accountant does not cover"
        )

    def __post_init__(self) -> None:
        if self.clusters < 1:
            raise ConfigError(f"strategy.clusters must be >= 1, got {self.clusters}")
        opt = self.server_optimizer
        if not isinstance(opt, ServerSGD) or opt.momentum != 0:
            raise ConfigError(
                "strategy.name=ifca averages each cluster's updates into its model (FedAvg per "
                "cluster, with strategy.server_lr): use strategy.server_optimizer=sgd without "
                "strategy.server_momentum"
            )

    @property
    def _server_lr(self) -> float:
        opt = self.server_optimizer
        assert isinstance(opt, ServerSGD)  # __post_init__ refuses the others
        return float(opt.lr)

    def check(self, spec: ParamSpec, num_clients: int | None) -> None:
        if num_clients is not None and self.clusters > num_clients:
            raise ConfigError(
                f"strategy.clusters={self.clusters} is more than the {num_clients} clients with "
                "training data: some clusters could never have a member; lower strategy.clusters"
            )

    def _tasks(self, tasks: list[Task], blobs: Sequence[Blob], kind: str) -> list[Task]:
        roles = {cluster_role(j): b.digest for j, b in enumerate(blobs)}
        return [
            replace(
                t, kind=kind, blobs=roles, upload=None, config={**t.config, "clusters": len(blobs)}
            )
            for t in tasks
        ]

    def fit_round(self, ctx: RoundContext) -> RoundPlan:
        if state_key(0) in ctx.state:
            models = [ctx.state[state_key(j)] for j in range(self.clusters)]
        elif ctx.channel.reveals_updates:
            return (yield from self._first_round(ctx))
        else:
            # the k-means warm start needs each update; a channel that hides them starts, as
            # the paper does, from k models (the initial one and k - 1 permutations of it)
            models = initial_models(ctx.spec, ctx.params, self.clusters, ctx.seed)
        blobs = [ctx.blob(m) for m in models]
        planned = self.configure_fit(ctx)
        picks: dict[int, int] = {}

        def on_pick(result: Result, vec: np.ndarray | None) -> None:
            pick = _reported_cluster(result, self.clusters, ctx.round)
            if pick is not None:
                picks[result.task.client_id] = pick

        yield Exchange(self._tasks(planned, blobs, SELECT), blobs, on_pick)
        fit = [
            replace(t, blobs={**t.blobs, MODEL: blobs[picks[t.client_id]].digest})
            for t in planned
            if t.client_id in picks
        ]
        used = [blobs[j] for j in sorted(set(picks.values()))]
        if self.individual_reason() is not None:  # a robust aggregator, per cluster
            aggs, examples = self._begin(ctx), [0] * self.clusters

            def on_result(result: Result, vec: np.ndarray | None) -> None:
                assert vec is not None  # fit results carry an update
                j = picks[result.task.client_id]
                aggs[j].add(vec, result.num_examples)
                examples[j] += result.num_examples

            yield from ctx.channel.individual(fit, used, on_result, "a robust aggregator")
            means = [self._mean(ctx, j, agg) for j, agg in enumerate(aggs)]
            count = sum(a.count for a in aggs)
            return self._finish(ctx, models, means, count, picks, examples)
        size = ctx.spec.size
        plan = SumPlan(tuple(Term(f"cluster{j}", size) for j in range(self.clusters)), rule="ifca")
        options = {c: {"cluster": j} for c, j in picks.items()}
        sums = yield from ctx.channel.sums(ctx, fit, used, plan, options=options)
        if sums is None:
            return None
        means = [sums.mean(j) for j in range(self.clusters)]
        return self._finish(ctx, models, means, sums.count, picks, list(sums.weights))

    def _first_round(self, ctx: RoundContext) -> RoundPlan:
        """Round 1: every selected client trains the initial model; their normalised updates,
        clustered by k-means, give each cluster its members and its first model."""
        updates: dict[int, tuple[np.ndarray, int]] = {}

        def keep(result: Result, vec: np.ndarray | None) -> None:
            assert vec is not None  # fit results carry an update
            updates[result.task.client_id] = (np.array(vec, np.float32), result.num_examples)

        yield from ctx.channel.individual(
            self.configure_fit(ctx), [ctx.model], keep, "ifca's k-means warm start"
        )
        ids = sorted(updates)
        labels = cluster_updates(
            np.stack([updates[c][0] for c in ids]) if ids else np.zeros((0, ctx.spec.size)),
            self.clusters,
            ctx.seed,
        )
        picks = dict(zip(ids, labels, strict=True))
        aggs, examples = self._begin(ctx), [0] * self.clusters
        for cid in ids:
            vec, n = updates[cid]
            aggs[picks[cid]].add(vec, n)
            examples[picks[cid]] += n
        # members trained the initial model; a cluster without any waits at a random start
        starts = initial_models(ctx.spec, ctx.params, self.clusters, ctx.seed)
        models = [
            ctx.params.copy() if agg.count else m for agg, m in zip(aggs, starts, strict=True)
        ]
        means = [self._mean(ctx, j, agg) for j, agg in enumerate(aggs)]
        count = sum(a.count for a in aggs)
        return self._finish(ctx, models, means, count, picks, examples)

    @staticmethod
    def _mean(ctx: RoundContext, j: int, agg: Aggregator) -> np.ndarray | None:
        if not agg.count:
            return None
        try:
            return agg.finish()
        except EmptyAggregate as exc:
            log.warning("round %d: cluster %d: nothing to aggregate (%s)", ctx.round, j, exc)
            return None

    def _begin(self, ctx: RoundContext) -> list[Aggregator]:
        aggs = [self.aggregator() for _ in range(self.clusters)]
        for agg in aggs:
            agg.begin(ctx.spec.size)
        return aggs

    def _finish(
        self,
        ctx: RoundContext,
        models: list[np.ndarray],
        means: Sequence[np.ndarray | None],
        count: int,
        picks: Mapping[int, int],
        examples: Sequence[float],
    ) -> np.ndarray | None:
        """Each cluster's model plus ``server_lr`` times its members' mean update (unchanged
        without members) into ``ctx.state``; the aggregate that moves the run's model to the
        cluster with the most examples."""
        if count < self.min_fit_clients:
            log.error(
                "only %d usable updates, min_fit_clients is %d; the cluster models are unchanged",
                count,
                self.min_fit_clients,
            )
            return None
        lr = self._server_lr
        for j, mean in enumerate(means):
            ctx.state[state_key(j)] = models[j]
            if mean is not None:
                ctx.state[state_key(j)] = (models[j] + lr * mean.astype(np.float32)).astype(
                    np.float32
                )
        ctx.metrics["clusters"] = {str(c): j for c, j in sorted(picks.items())}
        for j in range(self.clusters):
            ctx.metrics[f"cluster{j}_clients"] = sum(1 for p in picks.values() if p == j)
        largest = int(np.argmax(examples))  # the first of equals
        # the coordinator's model mirrors the largest cluster's: ``pseudo_gradient`` undoes lr
        mirror: np.ndarray = ctx.state[state_key(largest)] - ctx.params
        return mirror.astype(np.float32)

    def pseudo_gradient(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        lr = self._server_lr
        return (-aggregate / lr).astype(np.float32)

    def evaluation_blobs(self, ctx: RoundContext) -> list[Blob]:
        if state_key(0) not in ctx.state:
            return [ctx.model]  # before round 1: every cluster is still to be made
        return [ctx.blob(ctx.state[state_key(j)]) for j in range(self.clusters)]

    def configure_evaluate(self, ctx: RoundContext) -> list[Task]:
        tasks = super().configure_evaluate(ctx)
        if state_key(0) not in ctx.state:
            return tasks
        return self._tasks(tasks, self.evaluation_blobs(ctx), IFCA_EVALUATE)

    def evaluation_metrics(
        self, per_client: Sequence[tuple[int, dict[str, float]]]
    ) -> dict[str, Any]:
        plain = [(c, {k: v for k, v in m.items() if k != CLUSTER}) for c, m in per_client]
        out: dict[str, Any] = fairness_metrics(plain)
        picks = {c: int(m[CLUSTER]) for c, m in per_client if CLUSTER in m}
        if not picks:
            return out
        out["eval_clusters"] = {str(c): j for c, j in sorted(picks.items())}
        for j in range(self.clusters):
            members = [(c, m) for c, m in plain if picks.get(c) == j]
            out[f"cluster{j}_eval_clients"] = len(members)
            if members:
                means = fairness_metrics(members, prefix=f"cluster{j}_fed_")
                out.update({k: v for k, v in means.items() if k.endswith("_mean")})
        return out

    def init_state(self, params: np.ndarray) -> StrategyState:
        return {}  # the cluster models are made in round 1, where the spec is known


def _contribution(
    upload: np.ndarray, metrics: Mapping[str, float], options: Mapping[str, Any]
) -> RuleOutput:
    """A client's update in the slot of the cluster it trained; zero, and weight 0, in the
    others."""
    cluster, k = int(options["cluster"]), len(options["_sizes"])
    zero = np.zeros_like(upload)
    return [(upload, 1.0) if j == cluster else (zero, 0.0) for j in range(k)]


register_rule("ifca", _contribution)


def _reported_cluster(result: Result, k: int, round_num: int) -> int | None:
    value = result.metrics.get(CLUSTER)
    if value is None or not float(value).is_integer() or not 0 <= value < k:
        log.warning(
            "round %d: client %d reported no valid cluster (got %r, k=%d); left out",
            round_num,
            result.task.client_id,
            value,
            k,
        )
        return None
    return int(value)
