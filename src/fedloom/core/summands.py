"""What one client contributes to a round's sums: the part of the aggregation channel that runs the
same on the server (the ``plain`` channel) and on the client (the ``secure`` channel, which masks
the contribution before it leaves).

A sum-based strategy needs one or more weighted sums of vectors ("terms"): FedAvg the
example-weighted sum of deltas; SCAFFOLD that and the unweighted sum of control deltas; FedNova
the weighted sums of normalised deltas and of the clients' work ``||a_i||_1``; q-FFL the sums of
``Delta_k`` and ``h_k``; IFCA one sum per cluster. A fit task names its terms and a *rule* in its
config (``SUM``). The rule turns the client's upload (after its transforms) and its metrics into
one vector per term and a multiplier in ``[0, 1]`` per term (IFCA: 1 for the cluster the client
trained, 0 for the others); ``contribution`` weights them:

    w_j = m_j * (n / scale if term j is weighted else 1),   value_j = w_j * x_j / unit_j

and returns the concatenated values and the weights. The server sums both over the clients and
divides (``Sums.mean``). Under secure aggregation ``scale`` is the largest training-set size
declared in the cohort, so every weight lies in ``[0, 1]`` (what the masked weight encoding
needs), and ``unit_j`` (a public number the strategy chooses) brings a term whose values are
large (FedNova's work, q-FFL's ``h``) into the quantisation range; on the plain channel ``scale``
is None (``w = n``) and the units cancel.

Rules are registered from above, by the algorithm files (``register_rule``); ``identity`` splits
the upload into the terms as it is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SUM = "sum"
"""Task-config key of a fit task's sum plan (``SumPlan.config``)."""

RuleOutput = list[tuple[np.ndarray, float]]
Rule = Callable[[np.ndarray, Mapping[str, float], Mapping[str, Any]], RuleOutput]
"""``rule(upload, metrics, options) -> [(term vector, multiplier in [0, 1]), ...]``; raises
``ValueError`` when the client's result cannot contribute (a metric it must report is
missing)."""

RULES: dict[str, Rule] = {}


def register_rule(name: str, rule: Rule) -> None:
    """Make ``rule`` available to every engine and client process under ``name``."""
    RULES[name] = rule


@dataclass(frozen=True)
class Term:
    """One sum a strategy needs: ``size`` values, weighted by the client's example count (or by
    1), divided by the public ``unit`` on the way (see the module docstring)."""

    name: str
    size: int
    weighted: bool = True
    unit: float = 1.0


@dataclass(frozen=True)
class SumPlan:
    """The terms of a round's sums and the rule that makes a client's contribution to them."""

    terms: tuple[Term, ...]
    rule: str = "identity"
    options: Mapping[str, Any] | None = None

    @property
    def size(self) -> int:
        return sum(t.size for t in self.terms)

    def without_units(self) -> SumPlan:
        """The plan with every ``unit`` 1: the plain channel sums in float64 and needs none."""
        terms = tuple(Term(t.name, t.size, t.weighted) for t in self.terms)
        return SumPlan(terms, self.rule, self.options, self.clip)

    clip: float | None = None
    """Differential privacy's bound on each client's contribution (``contribution``)."""

    def config(self, scale: float | None, **options: Any) -> dict[str, Any]:
        """The task-config entry (``SUM``) of one client's fit task (``options`` add to the
        plan's own, per client: IFCA's cluster)."""
        config: dict[str, Any] = {
            "rule": self.rule,
            "terms": [[t.size, t.weighted, t.unit] for t in self.terms],
            "scale": scale,
            "options": {**(self.options or {}), **options},
        }
        if self.clip is not None:
            config["clip"] = self.clip
        return config

    @property
    def values(self) -> int:
        """How many values a contribution has: the terms', and the clip indicator with
        ``clip``."""
        return self.size + (self.clip is not None)


def positive_metric(metrics: Mapping[str, float], key: str) -> float:
    """The positive, finite metric ``key`` a client reported, for a rule that needs it;
    ``ValueError`` (the client cannot contribute) when it is missing or implausible."""
    value = metrics.get(key)
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"the result carries no valid positive {key} (got {value!r})")
    return float(value)


def _identity(
    upload: np.ndarray, metrics: Mapping[str, float], options: Mapping[str, Any]
) -> RuleOutput:
    sizes = options["_sizes"]
    if upload.shape[0] != sum(sizes):
        raise ValueError(f"the update has {upload.shape[0]} values, the terms take {sum(sizes)}")
    bounds = np.cumsum([0, *sizes])
    return [(upload[a:b], 1.0) for a, b in itertools.pairwise(bounds)]


register_rule("identity", _identity)


class Contributor:
    """A task's ``SUM`` config, parsed once: ``contributor(upload, num_examples, metrics)`` is
    ``contribution`` for every client of a round (per-client rule options as ``options``)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        try:
            self.rule_name = str(config["rule"])
            self.rule = RULES[self.rule_name]
            self.terms = [
                (int(n), bool(weighted), float(unit)) for n, weighted, unit in config["terms"]
            ]
            self.options = dict(config.get("options") or {})
            scale = config.get("scale")
            self.scale = None if scale is None else float(scale)
            clip = config.get("clip")
            self.clip = None if clip is None else float(clip)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"the task's sum plan is not usable ({exc!r}); known rules: {sorted(RULES)}"
            ) from None
        self.options["_sizes"] = [size for size, _, _ in self.terms]
        self.bounds = np.cumsum([0, *(size for size, _, _ in self.terms)])
        # FedAvg's plan: the upload is the one term, as it is
        self.plain = (
            self.rule_name == "identity"
            and len(self.terms) == 1
            and self.terms[0][2] == 1.0
            and self.clip is None
        )

    def terms_of(
        self,
        upload: np.ndarray,
        metrics: Mapping[str, float],
        options: Mapping[str, Any] | None = None,
    ) -> RuleOutput:
        """The rule's term vectors and multipliers for one client, before any weighting (what
        a robust aggregator compares)."""
        merged = self.options if not options else {**self.options, **options}
        parts = self.rule(np.asarray(upload), metrics, merged)
        if len(parts) != len(self.terms):
            raise ValueError(
                f"rule {self.rule_name!r} made {len(parts)} terms, the plan has {len(self.terms)}"
            )
        for j, ((vec, multiplier), (size, _, _)) in enumerate(zip(parts, self.terms, strict=True)):
            if vec.shape != (size,):
                raise ValueError(f"term {j} has shape {vec.shape}, the plan says ({size},)")
            if not 0.0 <= multiplier <= 1.0:
                raise ValueError(f"term {j}'s multiplier must lie in [0, 1], got {multiplier}")
        return parts

    def __call__(
        self,
        upload: np.ndarray,
        num_examples: int,
        metrics: Mapping[str, float],
        options: Mapping[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        n = float(num_examples)
        base = n if self.scale is None else min(1.0, n / self.scale)
        if not (np.isfinite(base) and base >= 0):
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        if self.plain:
            size, weighted, _ = self.terms[0]
            if upload.shape != (size,):
                raise ValueError(f"the update has {upload.shape[0]} values, the terms take {size}")
            w = base if weighted else 1.0
            return upload.astype(np.float64) * w, np.array([w])
        parts = self.terms_of(upload, metrics, options)
        weights = np.empty(len(self.terms), np.float64)
        flat = np.empty(int(self.bounds[-1]) + (self.clip is not None), np.float64)
        for j, ((vec, multiplier), (_, weighted, _)) in enumerate(
            zip(parts, self.terms, strict=True)
        ):
            weights[j] = multiplier * (base if weighted else 1.0)
            np.multiply(vec, weights[j], out=flat[self.bounds[j] : self.bounds[j + 1]])
        if self.clip is not None:
            body = flat[:-1]
            norm = float(np.linalg.norm(body))
            if norm > self.clip:
                body[:] = (body * (self.clip / norm)).astype(np.float32)
            flat[-1] = 1.0 if norm <= self.clip else 0.0
        for j, (_, _, unit) in enumerate(self.terms):
            if unit != 1.0:
                flat[self.bounds[j] : self.bounds[j + 1]] /= unit
        return flat, weights


def contribution(
    upload: np.ndarray, num_examples: int, metrics: Mapping[str, float], config: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """``(values, weights)``: what one client adds to the round's sums (float64), from its
    upload, its example count and metrics, and the task's ``SUM`` config.

    With ``clip`` in the config (differential privacy: ``strategies.private``) the weighted
    values, all terms together, are scaled to L2 norm at most ``clip`` (in float32, as the
    clipped update would travel), and one more value follows them: 1 when they were within it,
    else 0 (summed, the count adaptive clipping needs)."""
    return Contributor(config)(upload, num_examples, metrics)


@dataclass
class Sums:
    """A round's sums over the clients that contributed: per term the sum of ``w_j * x_j`` (in
    the term's own units, see ``contribution``) and of ``w_j``, and how many clients are in
    them."""

    totals: list[np.ndarray]
    weights: np.ndarray
    count: int
    extra: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Summed values past the terms' (the clip indicator of a ``clip`` plan)."""

    def mean(self, j: int) -> np.ndarray | None:
        """Term ``j``'s weighted mean (float64), or None when its weights sum to zero."""
        if not self.weights[j] > 0:
            return None
        mean: np.ndarray = self.totals[j] / self.weights[j]
        return mean

    @staticmethod
    def of(terms: Sequence[Term], values: np.ndarray, weights: np.ndarray, count: int) -> Sums:
        """Split the summed ``values`` into terms and undo each term's ``unit``."""
        bounds = np.cumsum([0, *(t.size for t in terms)])
        totals = [
            np.asarray(values[a:b], np.float64) * t.unit
            for a, b, t in zip(bounds[:-1], bounds[1:], terms, strict=True)
        ]
        extra = np.asarray(values[int(bounds[-1]) :], np.float64)
        return Sums(totals, np.asarray(weights, np.float64), count, extra)
