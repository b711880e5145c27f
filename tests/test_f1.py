"""The shared macro-F1: training's rule (absent class = 0) and the report's (absent class left
out), each equal to scikit-learn's matching ``zero_division``, and equal to each other when every
class occurs."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from smids_eval.evaluate.metrics import classification_metrics
from smids_eval.f1 import macro_f1

LABELS = [0, 1, 2]


def sk_macro_f1(y_true, y_pred, zero_division):
    return f1_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=zero_division)


def test_both_rules_agree_when_every_class_occurs():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true, y_pred = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
        train_rule = macro_f1(y_true, y_pred, 3, absent=0.0)
        report_rule = macro_f1(y_true, y_pred, 3, absent=np.nan)
        assert train_rule == report_rule == sk_macro_f1(y_true, y_pred, np.nan)


def test_absent_class_counts_as_zero_for_training_and_is_dropped_for_the_report():
    y_true, y_pred = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0])  # class 2 nowhere
    f1_0, f1_1 = 2 * 1 / (2 + 2), 2 * 2 / (3 + 3)
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((f1_0 + f1_1 + 0.0) / 3)
    assert macro_f1(y_true, y_pred, 3) == sk_macro_f1(y_true, y_pred, 0.0)
    assert macro_f1(y_true, y_pred, 3, absent=np.nan) == pytest.approx((f1_0 + f1_1) / 2)
    assert macro_f1(y_true, y_pred, 3, absent=np.nan) == sk_macro_f1(y_true, y_pred, np.nan)
    probs = np.eye(3)[y_pred]
    assert classification_metrics(probs, y_true)["cls_macro_f1"] == macro_f1(
        y_true, y_pred, 3, absent=np.nan)


def test_class_only_predicted_or_only_true_scores_zero_under_both_rules():
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])  # 2 predicted, never true
    assert macro_f1(y_true, y_pred, 3) == macro_f1(y_true, y_pred, 3, absent=np.nan)
    assert macro_f1(y_true, y_pred, 3) == sk_macro_f1(y_true, y_pred, np.nan)


def test_no_defined_class_is_nan_for_the_report():
    assert np.isnan(macro_f1([], [], 3, absent=np.nan))
    assert macro_f1([], [], 3) == 0.0
