"""Classification metrics in pure numpy: accuracy, per-class and macro precision/recall/F1, AUC.

Conventions follow scikit-learn with ``labels=range(num_classes)`` and ``zero_division=0``: a
ratio whose denominator is zero counts as 0.0, and macro averages run over every one of the
``num_classes`` classes, also those that appear in neither the labels nor the predictions. Macro F1
is the mean of the per-class F1 scores (not the F1 of macro precision and macro recall).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "average_precision",
    "best_f1_threshold",
    "binary_auc",
    "classification_metrics",
    "confusion_matrix",
    "positive_scores",
    "threshold_metrics",
]


def _as_labels(y: npt.ArrayLike, num_classes: int, name: str) -> npt.NDArray[np.int64]:
    """Validate class labels: one-dimensional, whole numbers in ``[0, num_classes)``."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels, got shape {arr.shape}")
    whole_floats = (
        arr.dtype.kind == "f"
        and bool(np.all(np.isfinite(arr)))
        and bool(np.all(arr == np.round(arr)))
    )
    if arr.dtype.kind not in "iub" and not whole_floats:
        raise ValueError(f"{name} must hold whole-number class labels, got {arr.dtype} values")
    labels = arr.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must hold labels in [0, {num_classes}), "
            f"got values in [{labels.min()}, {labels.max()}]"
        )
    return labels


def confusion_matrix(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, num_classes: int
) -> npt.NDArray[np.int64]:
    """Count matrix ``C`` with ``C[i, j]`` = examples of true class ``i`` predicted as ``j``.

    Same layout as ``sklearn.metrics.confusion_matrix(..., labels=range(num_classes))``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    true = _as_labels(y_true, num_classes, "y_true")
    pred = _as_labels(y_pred, num_classes, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    counts = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _average_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts).astype(np.float64)
    mean_rank = last_rank - (counts - 1) / 2.0
    return mean_rank[inverse.reshape(-1)]


def binary_auc(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Area under the ROC curve from the Mann–Whitney U statistic.

    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``, where ``R_pos`` is the sum of the
    positives' ranks among all scores and ties get average ranks, so a tied positive/negative pair
    counts one half. Returns NaN when ``y_true`` holds only one class (AUC is undefined there).
    """
    labels = _as_labels(y_true, 2, "y_true")
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if s.shape != labels.shape:
        raise ValueError(f"y_true and score differ in length: {labels.size} vs {s.size}")
    positive = labels == 1
    n_pos = int(positive.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(_average_ranks(s)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _ranked(
    y_true: npt.ArrayLike, score: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """Distinct scores from high to low, with the true and false positives when predicting
    class 1 for every score at or above each, and the number of positives."""
    labels = _as_labels(y_true, 2, "y_true")
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if s.shape != labels.shape:
        raise ValueError(f"y_true and score differ in length: {labels.size} vs {s.size}")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), y.size - 1] if y.size else np.zeros(0, int)
    tps = np.cumsum(y)[last_of_tie].astype(np.int64)
    fps = (last_of_tie + 1 - tps).astype(np.int64)
    return s[last_of_tie], tps, fps, int(y.sum())


def average_precision(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Area under the precision-recall curve as average precision, ``sum_k (R_k - R_{k-1}) P_k``
    over the distinct scores from high to low (tied scores form one step), as scikit-learn's
    ``average_precision_score``. NaN when ``y_true`` holds no positive."""
    _, tps, fps, n_pos = _ranked(y_true, score)
    if n_pos == 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def best_f1_threshold(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """The score threshold ``t`` (predict class 1 when ``score >= t``) with the highest F1 on
    these examples; among equal F1s the highest threshold. NaN when there is no positive."""
    thresholds, tps, fps, n_pos = _ranked(y_true, score)
    if n_pos == 0:
        return float("nan")
    f1 = 2 * tps / (tps + fps + n_pos)
    return float(thresholds[int(np.argmax(f1))])


def threshold_metrics(
    y_true: npt.ArrayLike, score: npt.ArrayLike, threshold: float
) -> dict[str, float]:
    """Precision, recall and F1 of class 1 when predicting it for ``score >= threshold``."""
    labels = _as_labels(y_true, 2, "y_true")
    predicted = np.asarray(score, dtype=np.float64).reshape(-1) >= threshold
    tp = int(np.sum(predicted & (labels == 1)))
    n_pred, n_pos = int(predicted.sum()), int(labels.sum())
    return {
        "threshold": float(threshold),
        "precision_at_threshold": tp / n_pred if n_pred else 0.0,
        "recall_at_threshold": tp / n_pos if n_pos else 0.0,
        "f1_at_threshold": 2 * tp / (n_pred + n_pos) if n_pred + n_pos else 0.0,
    }


def positive_scores(scores: npt.ArrayLike, num_classes: int) -> npt.NDArray[np.float64]:
    """The score that ranks examples by P(class 1) of a binary task's model outputs."""
    s = np.asarray(scores, dtype=np.float64)
    n = s.shape[0] if s.ndim else 0
    ranked = _predictions(s, num_classes, n)[1]
    if ranked is None:
        raise ValueError(f"a positive-class score needs a binary task, got {num_classes} classes")
    return ranked


def _predictions(
    scores: npt.ArrayLike, num_classes: int, n: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64] | None]:
    """Predicted labels, and for binary tasks a score that ranks examples by P(class 1)."""
    s = np.asarray(scores, dtype=np.float64)
    if num_classes == 1:
        if s.ndim == 2 and s.shape[1] == 1:
            s = s[:, 0]
        if s.shape != (n,):
            raise ValueError(
                f"with num_classes=1, scores must be binary logits of shape ({n},) or ({n}, 1), "
                f"got {s.shape}"
            )
        return (s > 0).astype(np.int64), s
    if s.shape != (n, num_classes):
        raise ValueError(f"scores must have shape ({n}, {num_classes}), got {s.shape}")
    pred = np.argmax(s, axis=1).astype(np.int64)
    if num_classes == 2:
        # The margin s1 - s0 ranks like P(class 1) whether the scores are logits (it is the
        # log-odds) or probabilities (it is 2 p1 - 1), while s1 alone would not for logits.
        return pred, s[:, 1] - s[:, 0]
    return pred, None


def _safe_ratio(num: npt.NDArray[np.int64], den: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """``num / den`` elementwise, 0.0 where ``den`` is zero."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_metrics(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, num_classes: int
) -> dict[str, float | list[float]]:
    """Accuracy, precision, recall and F1 (per class and macro), support, and AUC when binary.

    Parameters
    ----------
    y_true:
        Integer labels, shape ``(n,)``.
    scores:
        Logits or probabilities, shape ``(n, num_classes)``; the prediction is the argmax. With
        ``num_classes=1`` a binary logit of shape ``(n,)`` or ``(n, 1)``, predicting class 1 when
        positive; labels are then 0/1 and per-class lists have two entries.
    num_classes:
        Number of classes of the task; macro averages run over all of them.

    Returns
    -------
    ``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro``, the lists
    ``precision_per_class``, ``recall_per_class``, ``f1_per_class``, ``support_per_class``
    (counts of true labels), and for binary tasks ``auc`` (NaN when ``y_true`` holds one class)
    and ``pr_auc`` (average precision of class 1; NaN when ``y_true`` holds no positive).
    With no examples every ratio is a zero division and reported as 0.0.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    effective_classes = max(num_classes, 2)
    true = _as_labels(y_true, effective_classes, "y_true")
    pred, positive_score = _predictions(scores, num_classes, true.size)

    cm = confusion_matrix(true, pred, effective_classes)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_ratio(tp, predicted)
    recall = _safe_ratio(tp, support)
    # 2 tp / (2 tp + fp + fn) equals 2 P R / (P + R) where both are defined, and is 0.0 (not
    # undefined) when a class has neither true nor predicted examples.
    f1 = _safe_ratio(2 * tp, support + predicted)

    result: dict[str, float | list[float]] = {
        "accuracy": float(tp.sum() / true.size) if true.size else 0.0,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "precision_per_class": [float(v) for v in precision],
        "recall_per_class": [float(v) for v in recall],
        "f1_per_class": [float(v) for v in f1],
        "support_per_class": [int(v) for v in support],
    }
    if positive_score is not None:
        result["auc"] = binary_auc(true, positive_score)
        result["pr_auc"] = average_precision(true, positive_score)
    return result
