"""Malicious clients that poison their updates, as an engine wrapper: every engine (sequential,
vectorized, ray) trains the malicious clients as usual, and their fit uploads are replaced before
the coordinator sees them, exactly as a lying process would send them.

- ``sign_flip``: ``-scale * delta``, the honest update reversed and boosted (the sign-flipping
  attack of Li, Xu, Chen, Giannakis, Ling. "RSA: Byzantine-Robust Stochastic Aggregation Methods
  for Distributed Learning from Heterogeneous Datasets." AAAI 2019).
- ``scale``: ``scale * delta``, a boosted update (the model-replacement scaling of Bagdasaryan,
  Veit, Hua, Estrin, Shmatikov. "How To Backdoor Federated Learning." AISTATS 2020).
- ``gaussian``: ``N(0, scale^2)`` in every coordinate, whatever the client learned (the Gaussian
  Byzantine vectors of Blanchard et al. NeurIPS 2017).
- ``backdoor``: the client trains on data with a trigger (``data_poisoning``) and boosts its update
  by ``scale`` (Bagdasaryan et al. 2020); ``label_flip`` poisons data only.

The set of malicious clients is drawn once from the run's seed, so a run and its rerun attack with
the same clients, and it is reported in ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from fedloom.core.codec import get_codec
from fedloom.core.task import FIT, Blobs, Result, Task
from fedloom.engines.base import Engine

ATTACK_KINDS = ("label_flip", "sign_flip", "scale", "gaussian", "backdoor")
UPDATE_ATTACKS = ("sign_flip", "scale", "gaussian", "backdoor")


def malicious_clients(num_clients: int, fraction: float, seed: int) -> list[int]:
    """``round(fraction * num_clients)`` client ids, drawn from ``seed``, sorted."""
    k = round(fraction * num_clients)
    rng = np.random.default_rng([seed, 0xA77AC])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def poison_update(
    delta: np.ndarray, kind: str, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """What a malicious client of ``kind`` uploads instead of its honest ``delta``."""
    if kind == "sign_flip":
        out = -scale * delta
    elif kind in ("scale", "backdoor"):
        out = scale * delta
    elif kind == "gaussian":
        out = rng.normal(0.0, scale, size=delta.shape)
    else:
        return delta
    return np.asarray(out, dtype=np.float32)


class PoisonedEngine:
    """``engine`` with the fit uploads of ``malicious`` clients poisoned by ``kind``."""

    def __init__(
        self, engine: Engine, malicious: Sequence[int], kind: str, scale: float, seed: int
    ) -> None:
        self.engine = engine
        self.malicious = frozenset(malicious)
        self.kind, self.scale, self.seed = kind, scale, seed
        self.name = engine.name

    def run(self, tasks: Sequence[Task], blobs: Blobs) -> Iterator[Result]:
        for result in self.engine.run(tasks, blobs):
            yield self._poison(result)

    def _poison(self, result: Result) -> Result:
        task = result.task
        if (
            self.kind not in UPDATE_ATTACKS
            or task.kind != FIT
            or task.client_id not in self.malicious
            or not result.ok
            or result.payload is None
            or task.upload is None
        ):
            return result
        codec = get_codec(task.upload.codec)
        rng = np.random.default_rng([self.seed, task.round, task.client_id, 0xA77AC])
        delta = codec.decode(result.payload, task.upload.size)
        bad = poison_update(delta, self.kind, self.scale, rng)
        return replace(result, payload=codec.encode(bad, rng))

    def close(self) -> None:
        self.engine.close()
