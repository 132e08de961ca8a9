"""What ``fedloom.simulate`` checks of the user's arrays and model before anything runs: every
error names the argument (``clients[3]``, ``test``, ``model_fn``) and the fix, because a mistake
found in round 1 inside an engine would only show up as failed clients."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedloom.client.torch_client import TaskType
from fedloom.engines.base import ClientFn

ModelFn = Callable[[], nn.Module]
ArrayPair = tuple[npt.ArrayLike, npt.ArrayLike]

_PROBE_ROWS = 2  # examples pushed through the model to check it before the run


@dataclass(frozen=True)
class LearningTask:
    """The learning task of the user's data and model: what the clients' metrics measure."""

    kind: TaskType
    num_outputs: int  # classes (0 until the model's output width settles it); 1 for regression


def client_arrays(
    clients: Iterable[ArrayPair] | None,
    client_fn: ClientFn | None,
    num_clients: int | None,
    num_examples: Sequence[int] | None,
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The clients' ``(x, y)`` arrays, or None when ``client_fn`` builds the clients."""
    if clients is None and client_fn is None:
        raise ValueError(
            "no clients: pass clients=[(x0, y0), (x1, y1), ...] (one (x, y) pair of arrays per "
            "client), or client_fn=... with num_clients=N"
        )
    if clients is None:
        return None
    if client_fn is not None:
        raise ValueError("pass clients=[...] or client_fn=..., not both")
    if num_clients is not None or num_examples is not None:
        raise ValueError(
            "num_clients and num_examples go with client_fn; with clients=[...] they are the "
            "list's length and the arrays' sizes"
        )
    if isinstance(clients, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"clients must be a list of (x, y) pairs, one per client, got {describe(clients)}; "
            "split your data first, e.g. "
            "clients=list(zip(np.array_split(x, 10), np.array_split(y, 10)))"
        )
    local = [array_pair(item, f"clients[{i}]") for i, item in enumerate(clients)]
    if not local:
        raise ValueError(
            "clients is empty: pass one (x, y) pair of arrays per client, "
            "e.g. clients=[(x0, y0), (x1, y1)]"
        )
    if not any(len(y) for _, y in local):
        raise ValueError(f"all {len(local)} clients have 0 examples; give them data to train on")
    return local


def array_pair(item: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as arrays: x with one row per example, y one label or target per example."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(
            f"{where} must be an (x, y) pair of arrays, got {describe(item)}; "
            "pass one (x, y) pair per client, e.g. clients=[(x0, y0), (x1, y1)]"
        )
    x, y = as_array(item[0], f"{where} x"), as_array(item[1], f"{where} y")
    if x.ndim == 0:
        raise ValueError(f"{where}: x must hold one row per example, got a scalar")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{where}: y must hold one label or target per example, shape (n,), got shape {y.shape}"
        )
    if len(x) != len(y):
        raise ValueError(
            f"{where}: x has {len(x)} examples but y has {len(y)}; give one label per example"
        )
    if x.dtype.kind in "fb":
        x = x.astype(np.float32, copy=False)
    elif x.dtype.kind not in "iu":
        raise TypeError(f"{where}: x holds {x.dtype} values; give numbers (float or integer)")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{where}: x holds NaN or infinite values; drop or impute those rows")
    return x, y


def as_array(value: object, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: not an array ({exc})") from None


def describe(value: object) -> str:
    """``ndarray of shape (150, 64)``, ``list of 3 items``, ``str``: what was passed, for errors."""
    name = type(value).__name__
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{name} of shape {tuple(shape)}"
    if isinstance(value, (tuple, list)):
        return f"{name} of {len(value)} items"
    return name


def learning_task(
    task: TaskType | None, num_classes: int | None, ys: list[np.ndarray]
) -> LearningTask:
    """The task given or inferred from the labels' dtype; ``num_outputs`` is settled by
    ``check_model`` from the model's output width."""
    if task is None:
        kinds = {y.dtype.kind for y in ys if len(y)} or {ys[0].dtype.kind}
        if kinds <= set("biu"):
            task = "classification"
        elif kinds <= set("biuf"):
            task = "regression"
        else:
            raise TypeError(
                f"y holds {', '.join(sorted(str(y.dtype) for y in ys[:3]))} values; give integer "
                "class ids 0..C-1 for classification (np.unique(y, return_inverse=True)[1] maps "
                "any labels to them) or float targets for regression"
            )
    if task == "regression":
        if num_classes is not None:
            raise ValueError(
                f"num_classes={num_classes} applies to classification, and the task is "
                "regression (float y); pass integer labels or task='classification'"
            )
        return LearningTask("regression", 1)
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return LearningTask("classification", num_classes or 0)


def check_shapes(
    local: list[tuple[np.ndarray, np.ndarray]], test: tuple[np.ndarray, np.ndarray] | None
) -> None:
    shape = local[0][0].shape[1:]
    for i, (x, _) in enumerate(local):
        if x.shape[1:] != shape:
            raise ValueError(
                f"clients[{i}]: examples have shape {x.shape[1:]}, but clients[0]'s have "
                f"{shape}; every client's x must have the same shape per example"
            )
    if test is not None and test[0].shape[1:] != shape:
        raise ValueError(
            f"test: examples have shape {test[0].shape[1:]}, but the clients' have {shape}; "
            "the test set must have the clients' features"
        )


def check_labels(y: np.ndarray, where: str, learning: LearningTask) -> np.ndarray:
    """``y`` as the dtype its task trains with: int64 class ids in ``0..num_outputs-1``, or
    finite float32 targets."""
    if learning.kind == "regression":
        if y.dtype.kind not in "biuf":
            raise TypeError(f"{where}: regression targets must be numbers, got {y.dtype}")
        target = y.astype(np.float32, copy=False)
        if not np.isfinite(target).all():
            raise ValueError(f"{where}: y holds NaN or infinite targets; drop or impute those rows")
        return target
    whole = y.dtype.kind in "biu" or (
        y.dtype.kind == "f" and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all())
    )
    if not whole:
        raise ValueError(
            f"{where}: classification needs whole-number class ids, y holds {y.dtype} values "
            "that are not; pass task='regression' for real-valued targets"
        )
    labels = y.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise ValueError(f"{where}: class ids must be >= 0, got {labels.min()}")
    if len(labels) and labels.max() >= learning.num_outputs:
        raise ValueError(
            f"{where}: labels go up to {labels.max()} but the model outputs "
            f"{learning.num_outputs} scores per example; give its last layer "
            f"{labels.max() + 1} outputs, one per class"
        )
    return labels


def build_user_model(model_fn: ModelFn) -> nn.Module:
    if isinstance(model_fn, nn.Module):
        raise TypeError(
            f"model_fn must build the model, not be it: pass model_fn=lambda: "
            f"{type(model_fn).__name__}(...) (or the class {type(model_fn).__name__}), "
            f"not a {type(model_fn).__name__} instance"
        )
    if not callable(model_fn):
        raise TypeError(
            f"model_fn must be a function that returns a torch.nn.Module, such as "
            f"lambda: MyNet(); got {describe(model_fn)}"
        )
    model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model_fn() returned {describe(model)}, not a torch.nn.Module; "
            "return the model, e.g. model_fn=lambda: MyNet()"
        )
    if not any(p.requires_grad and p.is_floating_point() for p in model.parameters()):
        raise ValueError(
            f"model_fn()'s {type(model).__name__} has no trainable floating-point parameters; "
            "there is nothing to train"
        )
    return model


def check_model(
    model: nn.Module, x: np.ndarray, where: str, learning: LearningTask
) -> LearningTask:
    """Run the model on a few of ``where``'s examples: it must accept them and give one score per
    class (classification) or one output per example (regression). Returns ``learning`` with the
    number of classes settled by the model's output width."""
    batch = torch.from_numpy(np.ascontiguousarray(x[:_PROBE_ROWS]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception as exc:
        raise ValueError(
            f"the model from model_fn() fails on {where}'s examples (a batch of shape "
            f"{tuple(batch.shape)}): {type(exc).__name__}: {exc}; make its input layer take "
            f"examples of shape {tuple(x.shape[1:])}"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the model's forward returned {describe(out)}; it must return a tensor of scores"
        )
    n = len(batch)
    if learning.kind == "regression":
        if out.numel() != n:
            raise ValueError(
                f"regression needs one output per example, shape (batch,) or (batch, 1); the "
                f"model gives shape {tuple(out.shape)} for a batch of {n}"
            )
        return learning
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(
            f"classification needs one score per class, shape (batch, num_classes); the model "
            f"gives shape {tuple(out.shape)} for a batch of {n}"
        )
    width = int(out.shape[1])
    if learning.num_outputs and learning.num_outputs != width:
        raise ValueError(
            f"num_classes={learning.num_outputs} but the model outputs {width} scores per "
            "example; make them agree"
        )
    if width < 2:
        raise ValueError(
            "the model outputs 1 score per example; classification needs one per class (2 or "
            "more), or pass task='regression' for a real-valued target"
        )
    return replace(learning, num_outputs=width)
