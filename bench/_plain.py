"""Framework-free pieces shared by the plain-PyTorch, centralised and Flower rows.

Only numpy and torch: the Flower row imports this from its own virtualenv, where fedloom is not
installed. Each function restates, in a few lines, what fedloom does for the same step (seeding,
selection, the model), so every row trains on the same samples in the same order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass
class WorkloadData:
    """Everything a row needs, exactly as fedloom's Simulation built it (bench/simulation.py)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    client_rows: list[np.ndarray]
    init: dict[str, np.ndarray]
    model: str
    hidden: list[int]
    num_classes: int
    seed: int
    fraction_fit: float
    epochs: int
    batch_size: int
    lr: float

    @classmethod
    def load(cls, path: str | Path) -> WorkloadData:
        z = np.load(path, allow_pickle=False)
        offsets = z["client_offsets"]
        rows = z["client_rows"]
        meta = {k[5:]: z[k] for k in z.files if k.startswith("meta:")}
        return cls(
            x_train=z["x_train"],
            y_train=z["y_train"],
            x_test=z["x_test"],
            y_test=z["y_test"],
            client_rows=[rows[a:b] for a, b in itertools.pairwise(offsets)],
            init={k[6:]: z[k] for k in z.files if k.startswith("param:")},
            model=str(meta["model"]),
            hidden=[int(h) for h in meta["hidden"]],
            num_classes=int(meta["num_classes"]),
            seed=int(meta["seed"]),
            fraction_fit=float(meta["fraction_fit"]),
            epochs=int(meta["epochs"]),
            batch_size=int(meta["batch_size"]),
            lr=float(meta["lr"]),
        )


def client_seed(seed: int, round_num: int, client_id: int) -> int:
    """The same per-(round, client) seed as fedloom.client.torch_client.client_seed."""
    state = np.random.SeedSequence([seed, round_num, client_id]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def select(eligible: Sequence[int], fraction: float, seed: int, round_num: int) -> list[int]:
    """The same seeded selection as fedloom.server.selection.sample_clients (min_clients=1)."""
    n = len(eligible)
    k = min(n, max(1, math.ceil(fraction * n - 1e-9)))
    if k == n:
        return sorted(eligible)
    rng = np.random.default_rng([seed, round_num])
    return sorted(int(c) for c in rng.choice(np.asarray(eligible), size=k, replace=False))


class Net(nn.Module):
    """The MLP and the McMahan CNN, with fedloom's parameter names (so state dicts line up)."""

    def __init__(self, kind: str, input_shape: Sequence[int], hidden: Sequence[int], out: int):
        super().__init__()
        self.kind = kind
        if kind == "mlp":
            layers: list[nn.Module] = []
            width = math.prod(input_shape)
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers.append(nn.Linear(width, out))
            self.net = nn.Sequential(*layers)
        else:
            side = input_shape[1] // 4
            self.features = nn.Sequential(
                nn.Conv2d(input_shape[0], 32, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Linear(64 * side * side, 512), nn.ReLU(), nn.Linear(512, out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mlp":
            return self.net(x.flatten(1))  # type: ignore[no-any-return]
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


def build(data: WorkloadData) -> Net:
    """The workload's model, holding fedloom's initial weights."""
    model = Net(data.model, data.x_train.shape[1:], data.hidden, data.num_classes)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in data.init.items()})
    return model


def local_train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: WorkloadData, seed: int
) -> None:
    """FedAvg's ClientUpdate as fedloom's TorchClient runs it: same seed, same batch order.

    (TorchClient also seeds torch's global RNG for dropout; these models draw nothing from it, and
    a hand-written loop would not pay for it.)
    """
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=data.lr)
    model.train()
    n = len(x)
    for _ in range(data.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, data.batch_size):
            idx = order[start : start + data.batch_size]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = torch.cat(
        [model(torch.from_numpy(x[i : i + 2048])).argmax(1) for i in range(0, len(x), 2048)]
    )
    model.train()
    return float((pred.numpy() == y).mean())
