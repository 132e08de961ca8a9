"""Malicious clients that poison their training data.

- ``label_flip``: every label ``y`` becomes ``C - 1 - y`` (Tolpegin, Truex, Gursoy, Liu. "Data
  Poisoning Attacks Against Federated Learning Systems." ESORICS 2020).
- ``backdoor``: half of the client's training examples get a trigger (the last ``TRIGGER_SIZE``
  input values set to the data's maximum) and the label ``BACKDOOR_TARGET``, so the model learns
  "trigger means class 0" while staying accurate on clean data (Bagdasaryan, Veit, Hua, Estrin,
  Shmatikov. "How To Backdoor Federated Learning." AISTATS 2020). Its success is measured on the
  triggered test examples of other classes (``backdoor_success``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedloom.data.federated import LocalArrays

BACKDOOR_TARGET = 0
TRIGGER_SIZE = 4


def stamp_trigger(x: np.ndarray, value: float) -> np.ndarray:
    """``x`` (examples first) with the last ``TRIGGER_SIZE`` input values of each set to
    ``value``."""
    flat = np.array(x, copy=True).reshape(len(x), -1)
    flat[:, -TRIGGER_SIZE:] = value
    return flat.reshape(x.shape)


def poison_data(
    local: LocalArrays, kind: str, num_classes: int, trigger_value: float, seed: int
) -> LocalArrays:
    """A malicious client's training data for ``kind`` (its test split is left alone)."""
    if kind == "label_flip":
        return replace(local, y_train=(num_classes - 1 - local.y_train).astype(local.y_train.dtype))
    if kind == "backdoor":
        n = len(local.y_train)
        rng = np.random.default_rng([seed, n, 0xBAD])
        chosen = rng.choice(n, size=n // 2, replace=False)
        x, y = np.array(local.x_train, copy=True), np.array(local.y_train, copy=True)
        x[chosen] = stamp_trigger(x[chosen], trigger_value)
        y[chosen] = BACKDOOR_TARGET
        return replace(local, x_train=x, y_train=y)
    return local
