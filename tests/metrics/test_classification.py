"""Classification metrics against hand-computed values and against scikit-learn."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from fedloom.metrics import (
    average_precision,
    best_f1_threshold,
    binary_auc,
    classification_metrics,
    confusion_matrix,
    threshold_metrics,
)

# Three classes, six examples. Confusion matrix (rows true, columns predicted):
#   [[1, 1, 0],
#    [0, 2, 1],
#    [0, 1, 0]]
# tp = [1, 2, 0], support = [2, 3, 1], predicted = [1, 4, 1]
Y_TRUE = np.array([0, 0, 1, 1, 1, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 1])


def _logits(pred: np.ndarray, num_classes: int) -> np.ndarray:
    logits: np.ndarray = np.eye(num_classes)[pred] * 4.0 - 2.0
    return logits


def _as_floats(values: list[Fraction]) -> list[float]:
    return [float(v) for v in values]


def test_confusion_matrix_hand_example() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 1], [0, 1, 0]])
    assert cm.dtype == np.int64


def test_three_class_hand_example() -> None:
    m = classification_metrics(Y_TRUE, _logits(Y_PRED, 3), num_classes=3)

    precision = [Fraction(1, 1), Fraction(2, 4), Fraction(0)]
    recall = [Fraction(1, 2), Fraction(2, 3), Fraction(0)]
    # 2PR / (P + R): 2/3 for class 0, 4/7 for class 1, 0 for class 2
    f1 = [Fraction(2, 3), Fraction(4, 7), Fraction(0)]
    assert m["accuracy"] == pytest.approx(float(Fraction(3, 6)))
    assert m["precision_per_class"] == pytest.approx(_as_floats(precision))
    assert m["recall_per_class"] == pytest.approx(_as_floats(recall))
    assert m["f1_per_class"] == pytest.approx(_as_floats(f1))
    assert m["precision_macro"] == pytest.approx(float(Fraction(1, 2)))
    assert m["recall_macro"] == pytest.approx(float(Fraction(7, 18)))
    assert m["f1_macro"] == pytest.approx(float(Fraction(26, 63)))
    assert m["support_per_class"] == [2, 3, 1]
    assert "auc" not in m


def test_macro_averages_over_absent_classes() -> None:
    # Class 3 is in neither labels nor predictions; it counts as 0 in every macro average.
    m = classification_metrics(Y_TRUE, _logits(Y_PRED, 4), num_classes=4)
    assert m["precision_per_class"] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert m["precision_macro"] == pytest.approx(float(Fraction(3, 2) / 4))
    assert m["recall_macro"] == pytest.approx(float(Fraction(7, 6) / 4))
    assert m["f1_macro"] == pytest.approx(float(Fraction(26, 21) / 4))
    assert m["support_per_class"] == [2, 3, 1, 0]


# Positives score {0.4, 0.8, 0.9}, negatives {0.1, 0.4, 0.8}. Pairs won by the positive:
# 0.4 -> 1 + 1/2 + 0, 0.8 -> 1 + 1 + 1/2, 0.9 -> 3; total 7 of 9 pairs.
AUC_LABELS = np.array([0, 0, 1, 1, 0, 1])
AUC_SCORES = np.array([0.1, 0.4, 0.4, 0.8, 0.8, 0.9])


def test_auc_with_ties_hand_value() -> None:
    assert binary_auc(AUC_LABELS, AUC_SCORES) == pytest.approx(7 / 9)


def test_binary_two_column_probabilities() -> None:
    probs = np.stack([1 - AUC_SCORES, AUC_SCORES], axis=1)
    m = classification_metrics(AUC_LABELS, probs, num_classes=2)
    assert m["auc"] == pytest.approx(7 / 9)
    # predictions (p > 0.5): [0, 0, 0, 1, 1, 1]; tp=2, fp=1, fn=1 for class 1
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision_per_class"] == pytest.approx([2 / 3, 2 / 3])
    assert m["f1_per_class"] == pytest.approx([2 / 3, 2 / 3])


def test_binary_two_column_logits_rank_by_margin() -> None:
    # Class-1 logits alone would rank example 1 above example 0; the log-odds do not.
    logits = np.array([[0.0, 4.0], [3.0, 4.5]])  # log-odds 4.0 (positive) vs 1.5 (negative)
    assert classification_metrics([1, 0], logits, num_classes=2)["auc"] == 1.0


@pytest.mark.parametrize("shape", [(6,), (6, 1)])
def test_single_logit_binary(shape: tuple[int, ...]) -> None:
    logits = (AUC_SCORES - 0.5).reshape(shape)
    m = classification_metrics(AUC_LABELS, logits, num_classes=1)
    assert m["auc"] == pytest.approx(7 / 9)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["support_per_class"] == [3, 3]


def test_auc_single_class_is_nan() -> None:
    m = classification_metrics([1, 1], np.array([0.3, -0.2]), num_classes=1)
    assert np.isnan(m["auc"])


def test_zero_division_is_zero() -> None:
    # Nothing predicted as class 1 and no class-1 labels: precision, recall and F1 are 0.0.
    m = classification_metrics([0, 0], _logits(np.array([0, 0]), 2), num_classes=2)
    assert m["precision_per_class"] == [1.0, 0.0]
    assert m["recall_per_class"] == [1.0, 0.0]
    assert m["f1_per_class"] == [1.0, 0.0]
    assert m["f1_macro"] == 0.5


@pytest.mark.parametrize("num_classes", [3, 5])
def test_matches_sklearn_on_random_data(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    # Labels drawn from the first three classes only, so with 5 classes two are absent.
    y = rng.integers(0, 3, size=200)
    scores = rng.normal(size=(200, num_classes))
    m = classification_metrics(y, scores, num_classes)
    pred = scores.argmax(axis=1)
    labels = list(range(num_classes))

    p, r, f, s = precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    pm, rm, fm, _ = precision_recall_fscore_support(
        y, pred, labels=labels, average="macro", zero_division=0
    )
    np.testing.assert_allclose(m["precision_per_class"], p)
    np.testing.assert_allclose(m["recall_per_class"], r)
    np.testing.assert_allclose(m["f1_per_class"], f)
    assert m["support_per_class"] == s.tolist()
    assert m["precision_macro"] == pytest.approx(pm)
    assert m["recall_macro"] == pytest.approx(rm)
    assert m["f1_macro"] == pytest.approx(fm)
    np.testing.assert_array_equal(
        confusion_matrix(y, pred, num_classes), sk_confusion_matrix(y, pred, labels=labels)
    )


def test_auc_matches_sklearn_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=300)
    probs1 = np.round(rng.uniform(size=300), 1)  # eleven distinct values: many ties
    probs = np.stack([1 - probs1, probs1], axis=1)
    m = classification_metrics(y, probs, num_classes=2)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs1))


def test_no_examples_follow_zero_division_convention() -> None:
    m = classification_metrics(np.zeros(0, np.int64), np.zeros((0, 2)), num_classes=2)
    assert m["accuracy"] == 0.0
    assert m["f1_macro"] == 0.0
    assert m["support_per_class"] == [0, 0]
    assert np.isnan(m["auc"])


def test_float_labels_with_whole_values_are_accepted() -> None:
    m = classification_metrics(np.array([0.0, 1.0]), np.array([-1.0, 1.0]), num_classes=1)
    assert m["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("y_true", "scores", "num_classes", "match"),
    [
        ([0, 3], np.zeros((2, 3)), 3, r"labels in \[0, 3\)"),
        ([0, 1], np.zeros((2, 2)), 3, r"shape \(2, 3\)"),
        ([0, 1], np.zeros(2), 2, r"shape \(2, 2\)"),
        ([0, 1], np.zeros((2, 2)), 1, "binary logits"),
        ([0.5, 1], np.zeros((2, 2)), 2, "whole-number"),
        ([0], np.zeros((1, 1)), 0, "num_classes must be >= 1"),
    ],
)
def test_invalid_inputs_raise(
    y_true: list[float], scores: np.ndarray, num_classes: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(np.asarray(y_true), scores, num_classes)


# Sorted by score: 0.9 (+), 0.8 (+, -), 0.4 (+, -), 0.1 (-). Steps of recall 1/3, 1/3, 1/3 at
# precisions 1/1, 2/3 (the tie at 0.8 counts both), 3/5: AP = (1 + 2/3 + 3/5) / 3 = 34/45.
def test_average_precision_hand_value_with_ties() -> None:
    assert average_precision(AUC_LABELS, AUC_SCORES) == pytest.approx(34 / 45)
    m = classification_metrics(AUC_LABELS, AUC_SCORES - 0.5, num_classes=1)
    assert m["pr_auc"] == pytest.approx(34 / 45)


def test_average_precision_matches_scikit_learn() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = np.round(rng.normal(size=200) + y, 1)  # rounded: many ties
    assert average_precision(y, score) == pytest.approx(average_precision_score(y, score))
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_best_f1_threshold_and_the_metrics_at_it() -> None:
    # Thresholds 0.9, 0.8, 0.4, 0.1 give F1 = 2tp / (tp + fp + 3): 2/4, 4/6, 6/8, 6/9.
    assert best_f1_threshold(AUC_LABELS, AUC_SCORES) == 0.4
    m = threshold_metrics(AUC_LABELS, AUC_SCORES, 0.4)
    assert m == {
        "threshold": 0.4,
        "precision_at_threshold": pytest.approx(3 / 5),
        "recall_at_threshold": 1.0,
        "f1_at_threshold": pytest.approx(6 / 8),
    }
    assert np.isnan(best_f1_threshold([0, 0], [0.3, 0.1]))
