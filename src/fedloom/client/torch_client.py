"""TorchClient: the Client protocol for any ``nn.Module``, loss and local dataset.

Local training follows FedAvg's ClientUpdate (McMahan et al. 2017): ``epochs`` passes over the local
data in shuffled minibatches of ``batch_size``. The shuffling order and any dropout draw from a
generator seeded by (seed, round, client id), so a client's result does not depend on which other
clients ran before it or beside it. The loop runs the shared local-training functions of
``fedloom.client.local`` (optimiser steps and the algorithm hooks named in the task config), the
same ones the vectorized engine runs for a whole cohort.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fedloom.client.base import ClientContext, EvalResult, FitResult
from fedloom.client.local import (
    LocalHooks,
    LocalOptimizer,
    LocalTraining,
    Tensors,
    client_seed,
    clip_and_noise,
    finetune_seed,
    flat_part,
    hooks_for,
    local_steps,
    make_local_optimizer,
    named_views,
    noise_generator,
    per_example_grads,
    state_arrays,
    state_views,
)
from fedloom.core.params import Params, ParamSpec
from fedloom.core.task import MASK
from fedloom.data import Dataset
from fedloom.data.federated import LocalArrays
from fedloom.metrics import (
    best_f1_threshold,
    classification_metrics,
    positive_scores,
    regression_metrics,
    threshold_metrics,
)

TaskType = Literal["classification", "regression"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


@torch.no_grad()
def mean_loss(
    model: nn.Module, x: np.ndarray, y: np.ndarray, loss_fn: LossFn, batch_size: int = 2048
) -> float:
    """The mean of ``loss_fn`` over (x, y) in eval mode, in batches: ``evaluate_model``'s loss
    without its other metrics (IFCA asks for it k times a client and round)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size])
        yb = torch.from_numpy(y[start : start + batch_size])
        total += float(loss_fn(model(xb), yb)) * len(xb)
    model.train(was_training)
    return total / max(len(x), 1)


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
    threshold_from: tuple[np.ndarray, np.ndarray] | None = None,
    extra_metrics: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Loss and task metrics of ``model`` on (x, y): accuracy/P/R/F1(/AUC, PR-AUC) or
    RMSE/MAE/R2.

    ``threshold_from``: for a binary task, the (x, y) on which to choose the decision threshold
    with the best F1 (the training data, never the test data); the metrics then add
    ``threshold`` and the ``precision``/``recall``/``f1_at_threshold`` of class 1 on (x, y).
    ``extra_metrics``: ``"perplexity"`` adds ``exp(loss)`` (the loss being the mean cross-entropy).
    """
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
    if "perplexity" in extra_metrics:
        metrics["perplexity"] = float(np.exp(metrics["loss"]))
    if task == "regression":
        metrics.update(regression_metrics(y, scores.reshape(-1), target_scale=target_scale))
    else:
        metrics.update(classification_metrics(y, scores, num_classes))
        if threshold_from is not None and num_classes <= 2 and len(x):
            x_fit, y_fit = threshold_from
            with torch.no_grad():
                model.eval()
                fit_scores = np.concatenate(
                    [
                        model(torch.from_numpy(x_fit[i : i + batch_size])).numpy()
                        for i in range(0, len(x_fit), batch_size)
                    ]
                )
                model.train(was_training)
            threshold = best_f1_threshold(y_fit, positive_scores(fit_scores, num_classes))
            if np.isfinite(threshold):
                metrics.update(
                    threshold_metrics(y, positive_scores(scores, num_classes), threshold)
                )
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
        extra_metrics: tuple[str, ...] = (),
    ) -> None:
        self.model = model
        self.extra_metrics = extra_metrics
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

    def fit(
        self, params: Params, config: Mapping[str, Any], context: ClientContext | None = None
    ) -> FitResult:
        """Train locally (``mode="train"``, returns the delta, or what the task's hooks upload) or
        take the local gradient at the global model (``mode="gradient"``, FedSGD)."""
        context = context if context is not None else ClientContext()
        set_params(self.model, params)
        spec = ParamSpec.of(params)
        seed = client_seed(
            int(config.get("seed", self.seed)), int(config.get("round", 0)), self.client_id
        )
        training = self.training.updated(config)
        hooks = hooks_for(config, training)
        if config.get("mode", "train") == "gradient":
            if training.dp_sgd:
                raise ValueError("gradient mode (FedSGD) takes no DP-SGD; use local training")
            if type(hooks) is not LocalHooks:
                raise ValueError(f"gradient mode (FedSGD) takes no local hooks, got {hooks.name!r}")
            loss, grads = self._full_gradient(training.batch_size)
            return FitResult(
                update=spec.flatten(grads),
                num_examples=self.num_examples,
                metrics={"train_loss": loss},
            )
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        global_np = spec.flatten(params)
        global_vec = torch.from_numpy(global_np)
        personal = hooks.personalize(spec, global_np, context.state)
        if hooks.start_personal and personal is not None:  # FedPer: from its own layers
            set_params(self.model, spec.unflatten(personal))
        shared = {"global": named_views(spec, names, global_vec)}
        for role in hooks.blobs:
            if role not in context.blobs:
                raise ValueError(f"local training {hooks.name!r} needs the task's {role!r} blob")
            blob = np.array(context.blobs[role], dtype=np.float32)  # writable, for torch
            shared[role] = named_views(spec, names, torch.from_numpy(blob))
        own = state_views(hooks.state, spec, names, context.state)
        masks = None
        if MASK in context.blobs:  # a pruned model: only the weights under the mask train
            mask = np.array(context.blobs[MASK], dtype=np.float32)
            masks = named_views(spec, names, torch.from_numpy(mask))
        start_loss = self.training_loss() if hooks.start_loss else None
        loss = self._train(training, seed, hooks, shared, own, masks)
        local = torch.from_numpy(spec.flatten(get_params(self.model)))
        full_delta = local - global_vec
        delta = named_views(spec, names, full_delta)
        num_steps = local_steps(self.num_examples, training)
        steps = torch.tensor(float(num_steps))
        with torch.no_grad():
            parts, new_state = hooks.final(delta, shared, own, steps)
        zeros = torch.zeros_like(full_delta)
        upload = torch.cat(
            [flat_part(spec, part, full_delta if i == 0 else zeros) for i, part in enumerate(parts)]
        )
        context.state.update(state_arrays(new_state))
        metrics = {"train_loss": loss, **hooks.metrics(num_steps, start_loss)}
        second = hooks.personal_pass()
        if second is not None:  # Ditto: the personal model, from where it was before the round
            set_params(self.model, spec.unflatten(global_np if personal is None else personal))
            metrics["personal_train_loss"] = self._train(training, seed, second, shared, {}, masks)
            trained = spec.flatten(get_params(self.model))
            context.state.update(hooks.keep_personal(spec, trained))
        return FitResult(update=upload.numpy(), num_examples=self.num_examples, metrics=metrics)

    def training_loss(self, params: Params | None = None) -> float:
        """The mean loss of the model (at ``params``, if given) on the local training data."""
        if params is not None:
            set_params(self.model, params)
        return mean_loss(self.model, self.x_train, self.y_train, self.loss_fn)

    def evaluate(
        self, params: Params, config: Mapping[str, Any], context: ClientContext | None = None
    ) -> EvalResult:
        """Evaluate the global model on the local test split (the training data if there is none).

        A task whose config names personalisation hooks (``config["local"]``: FedPer, Ditto)
        evaluates this client's personalised model from its state instead; with
        ``config["finetune_epochs"]`` the model is first trained that many epochs on the local
        training data (with the config's local-training settings), and the fine-tuned model is
        dropped after the evaluation.
        """
        state = context.state if context is not None else {}
        training = self.training.updated(config)
        spec = ParamSpec.of(params)
        personal = hooks_for(config, training).personalize(spec, spec.flatten(params), state)
        set_params(self.model, params if personal is None else spec.unflatten(personal))
        epochs = int(config.get("finetune_epochs", 0))
        if epochs > 0 and self.num_examples:
            seed = finetune_seed(
                int(config.get("seed", self.seed)), int(config.get("round", 0)), self.client_id
            )
            self._train(replace(training, epochs=epochs), seed, LocalHooks(), {}, {})
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
            extra_metrics=self.extra_metrics,
        )
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        return EvalResult(loss=scalars.pop("loss"), num_examples=len(x), metrics=scalars)

    def _train(
        self,
        training: LocalTraining,
        seed: int,
        hooks: LocalHooks,
        shared: Mapping[str, Tensors],
        own: Mapping[str, Tensors],
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> float:
        model, n = self.model, self.num_examples
        generator = torch.Generator().manual_seed(seed)
        # Dropout and other in-model randomness. Seed the CPU generator only: torch.manual_seed
        # also queues lazy accelerator seeding and captures a stack trace each time, which cost a
        # quarter of a digits-mlp-100 round (bench/profile_round.py).
        torch.default_generator.manual_seed(seed)
        named = {k: p for k, p in model.named_parameters() if p.requires_grad}
        x, y = torch.from_numpy(self.x_train), torch.from_numpy(self.y_train)
        model.train()
        total, seen, step = 0.0, 0, 0
        optimizer: LocalOptimizer | None = None
        trained: list[str] = []
        noise = noise_generator(seed) if training.dp_sgd else None
        if training.dp_sgd:
            _refuse_batch_norm(model)
        for _ in range(training.epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, training.batch_size):
                idx = order[start : start + training.batch_size]
                if noise is not None:
                    data_loss, grads = self._dp_sgd_step(training, named, x[idx], y[idx], noise)
                    if hooks.has_loss:
                        extra = torch.autograd.grad(
                            hooks.loss(named, shared, own), list(named.values()), allow_unused=True
                        )
                        grads = tuple(
                            g if e is None else g + e for g, e in zip(grads, extra, strict=True)
                        )
                else:
                    data_loss = self.loss_fn(model(x[idx]), y[idx])
                    loss = (
                        data_loss + hooks.loss(named, shared, own) if hooks.has_loss else data_loss
                    )
                    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
                if optimizer is None:
                    # Like torch.optim, parameters the loss does not reach are left alone.
                    trained = [k for k, g in zip(named, grads, strict=True) if g is not None]
                    optimizer = make_local_optimizer(training, [named[k] for k in trained])
                by_name = dict(zip(named, grads, strict=True))
                step_grads = {k: by_name[k] for k in trained}
                if any(g is None for g in step_grads.values()):
                    raise ValueError("a parameter stopped receiving gradients between local steps")
                with torch.no_grad():
                    if hooks.has_grad:
                        step_grads = hooks.grad(step_grads, named, shared, own)
                    if masks is not None:
                        step_grads = {k: g * masks[k] for k, g in step_grads.items()}
                    optimizer.step(
                        [named[k] for k in trained], [step_grads[k] for k in trained], step
                    )
                step += 1
                total += float(data_loss.detach()) * len(idx)
                seen += len(idx)
        return total / max(seen, 1)

    def _dp_sgd_step(
        self,
        training: LocalTraining,
        named: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Generator,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The minibatch's mean loss and its DP-SGD gradient (``fedloom.client.local``)."""
        params = {k: p.detach() for k, p in named.items()}
        losses, per_example = per_example_grads(self.model, params, self.loss_fn, x, y)
        draws = {k: torch.randn(p.shape, generator=noise) for k, p in params.items()}
        weights = torch.full((len(x),), 1.0 / len(x))
        grads = clip_and_noise(
            per_example,
            weights,
            training.dp_sgd_max_grad_norm,
            draws,
            training.dp_sgd_noise_multiplier,
        )
        return losses.mean(), tuple(grads[k] for k in named)

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


def _refuse_batch_norm(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            raise ValueError(
                f"DP-SGD needs per-example gradients, and batch norm layer {name!r} mixes the "
                "examples of a batch; use GroupNorm or LayerNorm"
            )


def dataset_client(
    model: nn.Module,
    dataset: Dataset,
    local: LocalArrays,
    *,
    client_id: int,
    seed: int,
    training: LocalTraining | None = None,
) -> TorchClient:
    """A TorchClient on one client's arrays of a loaded dataset, with the dataset's task, number
    of classes and target scale (a simulated client, a demo client, a CSV client)."""
    return TorchClient(
        model,
        local.x_train,
        local.y_train,
        x_test=local.x_test,
        y_test=local.y_test,
        task=dataset.task,
        num_classes=dataset.num_classes,
        target_scale=dataset.target_scale,
        client_id=client_id,
        seed=seed,
        training=training,
        extra_metrics=dataset.extra_metrics,
    )
