"""Evaluation metrics: classification, regression and fairness across clients."""

from fedloom.metrics.classification import binary_auc, classification_metrics, confusion_matrix
from fedloom.metrics.fairness import fairness_summary
from fedloom.metrics.regression import regression_metrics

__all__ = [
    "binary_auc",
    "classification_metrics",
    "confusion_matrix",
    "fairness_summary",
    "regression_metrics",
]
