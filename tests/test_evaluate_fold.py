"""Random-forest head, evaluate_fold and the per-fold confidence artifacts end to end on
synthetic grouped features."""

import pickle

import numpy as np
import pytest

from smids_eval import CLASSES
from smids_eval.config import EvalConfig
from smids_eval.evaluate import evaluate_fold, fit_confidence_artifacts
from smids_eval.evaluate.rf_head import RandomForestHead
from smids_eval.outputs import ModelOutputs

SMALL_GRID = {"n_estimators": [30], "max_depth": [None, 4], "min_samples_leaf": [1],
              "max_features": ["sqrt"]}


def grouped_features(n, rng, shift=0.0):
    """Three Gaussian classes in 16-D, 10 donors with a donor offset."""
    labels = rng.integers(0, 3, n)
    groups = rng.integers(0, 10, n)
    centres = np.eye(3, 16) * 3
    donor = np.random.default_rng(99).normal(0, 0.3, (10, 16))
    x = centres[labels] + donor[groups] + rng.normal(0, 1, (n, 16)) + shift
    return x, labels, groups


@pytest.fixture(scope="module")
def rf_outputs():
    rng = np.random.default_rng(0)
    x, y, g = grouped_features(1400, rng)
    head = RandomForestHead(param_grid=SMALL_GRID).fit(x[:300], y[:300], g[:300])
    # a validation set large enough for a 5%-risk threshold with a 90% guarantee
    split = {"train": slice(0, 300), "val": slice(300, 1000), "test": slice(1000, 1400)}
    outs = {k: head.outputs(x[s], y[s], g[s]) for k, s in split.items()}
    far = rng.normal(0, 1, (80, 16)) * 4 - 6
    outs["far"] = head.outputs(far)
    return head, outs


def test_rf_head_beats_chance_with_grouped_tuning(rf_outputs):
    head, outs = rf_outputs
    test = outs["test"]
    assert set(head.best_params_) == set(SMALL_GRID)
    assert head.best_score_ > 0.6
    assert (head.predict(test.features) == test.labels).mean() > 0.7  # chance = 1/3
    p = head.predict_proba(test.features)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(np.exp(test.logits), p + 1e-6)


def test_evaluate_fold_returns_flat_namespaced_floats(rf_outputs):
    _, o = rf_outputs
    shifted = {"gaussian_noise_s3": ModelOutputs(o["test"].logits[::-1], o["test"].features,
                                                 o["test"].labels)}
    res = evaluate_fold(o["train"], o["val"], o["test"], ood_sets={"far": o["far"]},
                        shifted=shifted, config=EvalConfig())
    for key in ("cls_recall_abnormal_sperm", "cal_ece_ts", "cal_temperature", "sel_aurc_msp",
                "sel_oracle_coverage_at_5pct_risk_msp", "sel_val_thr_risk_msp", "cp_lac_coverage_a0.1", "cp_aps_set_size_a0.05",
                "ood_far_knn_auroc", "ood_far_mahalanobis_fpr95",
                "shift_gaussian_noise_s3_accuracy_drop"):
        assert key in res, key
    assert res["mc_available"] == 0.0 and "mc_mi_mean" not in res
    assert all(isinstance(v, float) for v in res.values())
    assert res["ood_far_mahalanobis_auroc"] > 0.9
    assert res["shift_gaussian_noise_s3_accuracy_drop"] > 0.3  # shuffled predictions


def test_confidence_artifacts_apply_and_pickle(rf_outputs):
    _, o = rf_outputs
    art = fit_confidence_artifacts(o["train"], o["val"], EvalConfig())
    art = pickle.loads(pickle.dumps(art))
    frame = art.apply(o["test"])
    assert len(frame) == len(o["test"])
    assert {"predicted_class", "prob_normal_sperm", "prob_abnormal_sperm", "prob_non_sperm",
            "mc_mi", "ood_score", "in_distribution", "conformal_set", "decision",
            "refer_reason"} <= set(frame)
    assert frame["mc_mi"].isna().all() and set(frame["decision"]) <= {"accept", "refer"}
    assert set(frame["predicted_class"]) <= set(CLASSES)
    members = frame["conformal_set"].str.split("|")
    assert members.apply(lambda m: all(c in CLASSES for c in m if c)).all()
    # far-away features are flagged out of distribution and referred
    far = art.apply(o["far"])
    assert (~far["in_distribution"]).mean() > 0.9
    assert (far.loc[~far["in_distribution"], "decision"] == "refer").all()
    assert (far.loc[~far["in_distribution"], "refer_reason"] == "ood").all()
    refused = frame[frame["in_distribution"] & (frame["decision"] == "refer")]
    assert (refused["refer_reason"] == "low_confidence").all()
    assert (frame["decision"] == "accept").any()
    # with MC samples the mc_mi column is filled
    mc = np.stack([o["test"].probs] * 3)
    mc[0] = np.roll(mc[0], 1, axis=1)
    with_mc = ModelOutputs(o["test"].logits, o["test"].features, o["test"].labels, mc)
    assert (art.apply(with_mc)["mc_mi"] >= 0).all()


def test_confidence_artifacts_reuse_the_folds_fitted_temperature(rf_outputs):
    _, o = rf_outputs
    res = evaluate_fold(o["train"], o["val"], o["test"], ood_sets={}, shifted={},
                        config=EvalConfig())
    refit = fit_confidence_artifacts(o["train"], o["val"], EvalConfig())
    reused = fit_confidence_artifacts(o["train"], o["val"], EvalConfig(),
                                      temperature=res["cal_temperature"])
    assert reused.temperature == refit.temperature == res["cal_temperature"]
    assert reused.confidence_threshold == refit.confidence_threshold
    # the given temperature is used as is, not refitted
    other = fit_confidence_artifacts(o["train"], o["val"], EvalConfig(),
                                     temperature=2 * res["cal_temperature"])
    assert other.temperature == 2 * res["cal_temperature"]
