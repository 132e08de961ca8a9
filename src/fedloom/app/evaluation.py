"""The one central evaluator: the global model's metrics on a test set held by the server.

``fedloom run`` evaluates on its dataset's test split, ``fedloom.simulate`` on the ``test=``
arrays, ``fedloom server`` on the dataset's test split or on ``--eval-data FILE.npz``; all three
are ``central_evaluator`` over their own model instance, with the metric functions every client
uses (``evaluate_model``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedloom.client.torch_client import TaskType, evaluate_model, set_params
from fedloom.core.params import Params
from fedloom.data import Dataset
from fedloom.errors import DeploymentError
from fedloom.server.coordinator import CentralEvaluator

__all__ = ["central_evaluator", "dataset_evaluator", "eval_data_evaluator"]

ExtraMetrics = Callable[[nn.Module], dict[str, Any]]
"""More metrics of the evaluated model (a backdoor's success rate), added to its test metrics."""


def central_evaluator(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    also: ExtraMetrics | None = None,
    **options: Any,
) -> CentralEvaluator:
    """Evaluation of the global params on ``(x, y)``, loaded into ``model`` (an instance the
    evaluator keeps for itself). ``options`` are ``evaluate_model``'s keyword arguments (``task``
    and ``num_classes`` at least); ``also`` adds metrics of the loaded model."""

    def evaluate(params: Params) -> dict[str, Any]:
        set_params(model, params)
        out = evaluate_model(model, x, y, **options)
        if also is not None:
            out.update(also(model))
        return out

    return evaluate


def dataset_evaluator(
    model: nn.Module, ds: Dataset, also: ExtraMetrics | None = None
) -> CentralEvaluator:
    """Evaluation on ``ds``'s test split, with its task, target scale and extra metrics; a binary
    task also reports the metrics at the F1-best threshold chosen on the training split."""
    num_outputs = ds.num_classes if ds.task == "classification" else 1
    return central_evaluator(
        model,
        ds.x_test,
        ds.y_test,
        task=ds.task,
        num_classes=num_outputs,
        target_scale=ds.target_scale,
        threshold_from=(ds.x_train, ds.y_train) if num_outputs == 2 else None,
        extra_metrics=ds.extra_metrics,
        also=also,
    )


def eval_data_evaluator(path: Path, model: nn.Module) -> tuple[CentralEvaluator, dict[str, Any]]:
    """Central evaluation of ``model`` on an ``.npz`` file with arrays ``x`` and ``y``.

    ``x`` holds the inputs exactly as the model takes them (``(n, *input_shape)``, cast to
    float32). ``y`` decides the task: integer class ids mean classification, with as many classes
    as the model has outputs; floats mean regression (one output, metrics in ``y``'s units).
    The same metric functions as a simulation's central evaluation are used.
    """
    x, y = _read_eval_arrays(path)
    classification = np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            width = int(model(torch.from_numpy(x[:1])).reshape(1, -1).shape[1])
    except Exception as exc:
        raise DeploymentError(
            f"--eval-data {path}: the model cannot take x of shape {x.shape[1:]} per example "
            f"({type(exc).__name__}: {exc}); save x exactly as the model takes it"
        ) from None
    finally:
        model.train(was_training)
    task: TaskType = "classification" if classification else "regression"
    if classification:
        targets = y.astype(np.int64)
        if width < 2 or targets.min() < 0 or targets.max() >= width:
            raise DeploymentError(
                f"--eval-data {path}: y holds class ids {int(targets.min())}.."
                f"{int(targets.max())}, but the model has {width} outputs; classification needs "
                "one output per class (or save y as floats for regression)"
            )
        num_classes = width
    else:
        if width != 1:
            raise DeploymentError(
                f"--eval-data {path}: y holds floats (regression), but the model has {width} "
                "outputs, not 1; save y as integer class ids for classification"
            )
        targets, num_classes = y.astype(np.float32), 1

    evaluate = central_evaluator(model, x, targets, task=task, num_classes=num_classes)
    data = {"eval_data": str(path), "task": task, "test_examples": len(targets)}
    if classification:
        data["num_classes"] = num_classes
    return evaluate, data


def _read_eval_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    how = "save it with numpy.savez(PATH, x=inputs, y=targets)"
    if not path.is_file():
        raise DeploymentError(f"--eval-data {path}: no such file; {how}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DeploymentError(f"--eval-data {path}: cannot read it ({exc}); {how}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DeploymentError(f"--eval-data {path} is one array, not an .npz archive; {how}")
    try:
        with loaded as data:
            missing = sorted({"x", "y"} - set(data.files))
            if missing:
                raise DeploymentError(
                    f"--eval-data {path} has arrays {sorted(data.files)}, no {' or '.join(missing)}"
                    f"; {how}"
                )
            x, y = data["x"], data["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DeploymentError(f"--eval-data {path}: cannot read it ({exc}); {how}") from None
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise DeploymentError(
            f"--eval-data {path}: x must be (n, *input_shape) and y (n,) with n >= 1, got x "
            f"{x.shape} and y {y.shape}"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DeploymentError(f"--eval-data {path}: x must be numeric, got {x.dtype}")
    numeric_y = np.issubdtype(y.dtype, np.number) and not np.issubdtype(y.dtype, np.complexfloating)
    if not (numeric_y or y.dtype == np.bool_):
        raise DeploymentError(
            f"--eval-data {path}: y must hold integer class ids or float targets, got {y.dtype}"
        )
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise DeploymentError(f"--eval-data {path}: y holds NaN or inf")
    return np.ascontiguousarray(x, dtype=np.float32), y
