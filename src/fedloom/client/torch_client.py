"""TorchClient: the Client protocol for any ``nn.Module``, loss and local dataset.

Local training follows FedAvg's ClientUpdate (McMahan et al. 2017): ``epochs`` passes over the local
data in shuffled minibatches of ``batch_size``. The shuffling order and any dropout draw from a
generator seeded by (seed, round, client id), so a client's result does not depend on which other
clients ran before it or beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fedloom.client.base import EvalResult, FitResult
from fedloom.core.params import Params, ParamSpec
from fedloom.metrics import classification_metrics, regression_metrics

TaskType = Literal["classification", "regression"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LocalTraining:
    """Local training hyperparameters; a task's config may override any of them per round."""

    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.05
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0

    def updated(self, config: Mapping[str, Any]) -> LocalTraining:
        keys = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay")
        return replace(self, **{k: config[k] for k in keys if k in config})


def client_seed(seed: int, round_num: int, client_id: int) -> int:
    """A 63-bit seed for one client in one round, independent of every other client's."""
    state = np.random.SeedSequence([seed, round_num, client_id]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def get_params(model: nn.Module) -> Params:
    """The model's floating-point state (parameters and buffers) as Params, copied."""
    return {
        k: v.detach().cpu().numpy().copy()
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    }


def set_params(model: nn.Module, params: Mapping[str, np.ndarray]) -> None:
    """Copy ``params`` into the model in place."""
    state = model.state_dict()
    with torch.no_grad():
        for name, value in params.items():
            state[name].copy_(torch.from_numpy(np.asarray(value)))


def default_loss(task: TaskType) -> LossFn:
    if task == "regression":
        return lambda out, y: nn.functional.mse_loss(out.reshape(y.shape), y)
    return nn.functional.cross_entropy


def make_optimizer(model: nn.Module, training: LocalTraining) -> torch.optim.Optimizer:
    if training.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=training.lr,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
        )
    if training.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=training.lr, weight_decay=training.weight_decay
        )
    raise ValueError(f"unknown optimizer {training.optimizer!r}; choose 'sgd' or 'adam'")


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: TaskType,
    num_classes: int,
    target_scale: tuple[float, float] | None = None,
    loss_fn: LossFn | None = None,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Loss and task metrics of ``model`` on (x, y): accuracy/P/R/F1(/AUC) or RMSE/MAE/R2."""
    loss_fn = loss_fn or default_loss(task)
    was_training = model.training
    model.eval()
    outputs, total = [], 0.0
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size])
        yb = torch.from_numpy(y[start : start + batch_size])
        out = model(xb)
        total += float(loss_fn(out, yb)) * len(xb)
        outputs.append(out.numpy())
    model.train(was_training)
    scores = np.concatenate(outputs) if outputs else np.zeros((0, max(num_classes, 1)), np.float32)
    metrics: dict[str, Any] = {"loss": total / max(len(x), 1)}
    if task == "regression":
        metrics.update(regression_metrics(y, scores.reshape(-1), target_scale=target_scale))
    else:
        metrics.update(classification_metrics(y, scores, num_classes))
    return metrics


class TorchClient:
    """A federated client around a torch model and a local (x, y) dataset held as arrays.

    The model instance may be shared between clients that run one after another (the sequential
    engine does this): ``fit`` and ``evaluate`` always load the global params first.
    """

    def __init__(
        self,
        model: nn.Module,
        x_train: np.ndarray,
        y_train: np.ndarray,
        *,
        x_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
        task: TaskType = "classification",
        num_classes: int = 2,
        target_scale: tuple[float, float] | None = None,
        client_id: int = 0,
        seed: int = 0,
        training: LocalTraining | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        self.model = model
        self.x_train, self.y_train = x_train, y_train
        self.x_test, self.y_test = x_test, y_test
        self.task = task
        self.num_classes = num_classes
        self.target_scale = target_scale
        self.client_id = client_id
        self.seed = seed
        self.training = training or LocalTraining()
        self.loss_fn = loss_fn or default_loss(task)

    @property
    def num_examples(self) -> int:
        return len(self.x_train)

    def fit(self, params: Params, config: Mapping[str, Any]) -> FitResult:
        """Train locally (``mode="train"``, returns the delta) or take the local gradient at the
        global model (``mode="gradient"``, FedSGD)."""
        set_params(self.model, params)
        spec = ParamSpec.of(params)
        seed = client_seed(
            int(config.get("seed", self.seed)), int(config.get("round", 0)), self.client_id
        )
        training = self.training.updated(config)
        if config.get("mode", "train") == "gradient":
            loss, grads = self._full_gradient(training.batch_size)
            return FitResult(
                update=spec.flatten(grads),
                num_examples=self.num_examples,
                metrics={"train_loss": loss},
            )
        loss = self._train(training, seed)
        local = get_params(self.model)
        delta = spec.flatten(local) - spec.flatten(params)
        return FitResult(update=delta, num_examples=self.num_examples, metrics={"train_loss": loss})

    def evaluate(self, params: Params, config: Mapping[str, Any]) -> EvalResult:
        """Evaluate the global model on the local test split (the training data if there is none)."""
        set_params(self.model, params)
        x, y = (
            (self.x_test, self.y_test) if self.x_test is not None else (self.x_train, self.y_train)
        )
        assert y is not None
        metrics = evaluate_model(
            self.model,
            x,
            y,
            task=self.task,
            num_classes=self.num_classes,
            target_scale=self.target_scale,
            loss_fn=self.loss_fn,
        )
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        return EvalResult(loss=scalars.pop("loss"), num_examples=len(x), metrics=scalars)

    def _train(self, training: LocalTraining, seed: int) -> float:
        model, n = self.model, self.num_examples
        generator = torch.Generator().manual_seed(seed)
        # Dropout and other in-model randomness. Seed the CPU generator only: torch.manual_seed
        # also queues lazy accelerator seeding and captures a stack trace each time, which cost a
        # quarter of a digits-mlp-100 round (bench/profile_round.py).
        torch.default_generator.manual_seed(seed)
        optimizer = make_optimizer(model, training)
        x, y = torch.from_numpy(self.x_train), torch.from_numpy(self.y_train)
        model.train()
        total, seen = 0.0, 0
        for _ in range(training.epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, training.batch_size):
                idx = order[start : start + training.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = self.loss_fn(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
        return total / max(seen, 1)

    def _full_gradient(self, batch_size: int) -> tuple[float, Params]:
        """Gradient of the mean local loss, accumulated over minibatches so memory stays bounded."""
        model, n = self.model, self.num_examples
        model.train()
        model.zero_grad(set_to_none=True)
        x, y = torch.from_numpy(self.x_train), torch.from_numpy(self.y_train)
        total = 0.0
        for start in range(0, n, batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            loss = self.loss_fn(model(xb), yb) * (len(xb) / n)
            loss.backward()
            total += float(loss.detach())
        named = dict(model.named_parameters())
        grads: Params = {}
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            p = named.get(name)
            g = p.grad if p is not None else None
            grads[name] = (g.numpy() if g is not None else np.zeros(value.shape, np.float32)).copy()
        return total, grads
