import math

import numpy as np
import pytest

from smids_eval.evaluate.metrics import classification_metrics, confusion
from smids_eval.evaluate.selective import aurc, coverage_at_risk, risk_coverage_curve

PROBS = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1],
                  [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.1, 0.4]])
LABELS = np.array([0, 0, 1, 1, 2, 2])  # predictions: 0 1 1 1 2 0


def test_hand_computed_classification_metrics():
    m = classification_metrics(PROBS, LABELS)
    assert m["cls_accuracy"] == pytest.approx(4 / 6)
    assert m["cls_balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["cls_recall_normal_sperm"] == pytest.approx(0.5)
    assert m["cls_recall_abnormal_sperm"] == pytest.approx(1.0)
    assert m["cls_recall_non_sperm"] == pytest.approx(0.5)
    assert m["cls_precision_normal_sperm"] == pytest.approx(0.5)
    assert m["cls_precision_abnormal_sperm"] == pytest.approx(2 / 3)
    assert m["cls_precision_non_sperm"] == pytest.approx(1.0)
    assert m["cls_macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["cls_nll"] == pytest.approx(-np.mean(np.log([.8, .3, .8, .7, .8, .4])))
    assert m["cls_brier"] == pytest.approx(1.8 / 6)
    assert m["cls_cm_non_sperm_normal_sperm"] == 1 and m["cls_cm_normal_sperm_abnormal_sperm"] == 1
    assert m["cls_cm_abnormal_sperm_abnormal_sperm"] == 2
    # class 0 vs rest: positives score .8,.3; negatives .1,.2,.1,.5 -> 7 of 8 pairs won
    assert m["cls_auroc_normal_sperm"] == pytest.approx(7 / 8)
    np.testing.assert_array_equal(confusion(LABELS, PROBS.argmax(1)),
                                  [[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_fold_missing_a_class_gives_nan_not_crash():
    m = classification_metrics(PROBS[:4], LABELS[:4])
    assert math.isnan(m["cls_recall_non_sperm"]) and math.isnan(m["cls_auroc_non_sperm"])
    assert m["cls_recall_abnormal_sperm"] == pytest.approx(1.0)
    assert np.isfinite(m["cls_auroc_ovr"]) and np.isfinite(m["cls_nll"])
    assert np.isfinite(m["cls_macro_f1"])


def test_risk_coverage_hand_case():
    conf, correct = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 0, 1])
    coverage, risk = risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 4])
    assert aurc(conf, correct) == pytest.approx((1 / 3 + 1 / 4) / 4)
    assert coverage_at_risk(conf, correct, 0.05) == (0.5, 0.8)
    assert coverage_at_risk(conf, correct, 0.3) == (1.0, 0.6)
    assert coverage_at_risk(conf, 1 - correct, 0.05) == (0.0, float("inf"))


def test_tied_confidences_are_accepted_together():
    coverage, risk = risk_coverage_curve(np.array([0.9, 0.9, 0.5]), np.array([1, 0, 1]))
    np.testing.assert_allclose(coverage, [2 / 3, 1.0])
    np.testing.assert_allclose(risk, [0.5, 1 / 3])
