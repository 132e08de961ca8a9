"""Regression metrics: RMSE and MAE in the target's original units, and R²."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["regression_metrics"]


def _as_vector(y: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape (n,) or (n, 1), got {arr.shape}")
    return arr


def regression_metrics(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    target_scale: tuple[float, float] | None = None,
) -> dict[str, float]:
    """``rmse``, ``mae`` and ``r2`` of a single-target regression.

    Parameters
    ----------
    y_true, y_pred:
        Targets and predictions, shape ``(n,)`` or ``(n, 1)``, in the units the model saw.
    target_scale:
        ``(mean, std)`` used to standardise the targets, if any. Errors are multiplied by ``std`` so
        that ``rmse`` and ``mae`` are reported in the original units; the mean cancels in a
        difference and is not used. ``r2`` is invariant to the scaling.

    Returns
    -------
    ``rmse``, ``mae`` and ``r2 = 1 - SS_res / SS_tot``. When ``y_true`` is constant
    (``SS_tot = 0``) R² is undefined and reported as 0.0, also for a perfect prediction (where
    scikit-learn would say 1.0). With no examples ``rmse`` and ``mae`` are NaN, not a flattering 0.
    """
    true = _as_vector(y_true, "y_true")
    pred = _as_vector(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    scale = 1.0
    if target_scale is not None:
        scale = float(target_scale[1])
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"target_scale std must be a positive finite number, got {scale}")

    if true.size == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "r2": 0.0}
    residual = true - pred
    ss_res = float(np.sum(residual**2))
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(ss_res / true.size)) * scale,
        "mae": float(np.mean(np.abs(residual))) * scale,
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
    }
