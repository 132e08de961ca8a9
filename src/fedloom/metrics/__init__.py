"""Evaluation metrics: classification, regression and fairness across clients."""

from fedloom.metrics.classification import (
    average_precision,
    best_f1_threshold,
    binary_auc,
    classification_metrics,
    confusion_matrix,
    positive_scores,
    threshold_metrics,
)
from fedloom.metrics.fairness import fairness_summary
from fedloom.metrics.pooled import pooled_metrics
from fedloom.metrics.regression import regression_metrics

__all__ = [
    "average_precision",
    "best_f1_threshold",
    "binary_auc",
    "classification_metrics",
    "confusion_matrix",
    "fairness_summary",
    "pooled_metrics",
    "positive_scores",
    "regression_metrics",
    "threshold_metrics",
]
