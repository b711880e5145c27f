"""MC-dropout, selective classification and conformal scorers on synthetic outputs."""

import numpy as np
from scipy.special import softmax

from smids_eval.evaluate.conformal import ConformalPredictor, ConformalScorer
from smids_eval.evaluate.mc_dropout import MCDropoutScorer, mutual_information
from smids_eval.evaluate.selective import SelectiveScorer
from smids_eval.outputs import ModelOutputs


def synthetic(n, rng, mc=None):
    """Calibrated synthetic model: labels sampled from softmax(logits)."""
    z = rng.normal(size=(n, 3)) * 2.0
    y = (softmax(z, 1).cumsum(1) > rng.random((n, 1))).argmax(1)
    mc_probs = None
    if mc is not None:
        mc_probs = softmax(z[None] + rng.normal(scale=mc, size=(10, n, 3)), axis=2)
    return ModelOutputs(logits=z, features=z, labels=y, mc_probs=mc_probs)


def test_mutual_information_nonzero_only_when_samples_vary():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=(50, 3)), 1)
    assert np.allclose(mutual_information(np.repeat(p[None], 8, axis=0)), 0.0, atol=1e-12)
    varied = synthetic(50, rng, mc=1.0).mc_probs
    assert (mutual_information(varied) > 1e-3).all()


def test_mc_scorer_reports_only_availability_without_samples():
    rng = np.random.default_rng(1)
    assert MCDropoutScorer().score(synthetic(100, rng)) == {"mc_available": 0.0}
    res = MCDropoutScorer().score(synthetic(100, rng, mc=0.5))
    assert res["mc_available"] == 1.0 and res["mc_mi_mean"] > 0
    assert 0 <= res["mc_accuracy"] <= 1 and np.isfinite(res["mc_nll_delta"])


def test_conformal_coverage_holds_at_each_alpha():
    rng = np.random.default_rng(2)
    val, test = synthetic(2000, rng), synthetic(2000, rng)
    res = ConformalScorer(alphas=(0.1, 0.05)).fit(None, val).score(test)
    for method in ("lac", "aps"):
        for a in (0.1, 0.05):
            assert res[f"cp_{method}_coverage_a{a:g}"] >= 1 - a - 0.025
        assert res[f"cp_{method}_set_size_a0.05"] >= res[f"cp_{method}_set_size_a0.1"]
    assert res["cp_lac_set_size_a0.1"] < 3  # not trivially the full set


def test_aps_set_is_a_prefix_of_the_sorted_classes():
    cp = ConformalPredictor("aps", alphas=(0.1,))
    cp.qhat_ = {0.1: 0.85}
    sets = cp.predict_sets(np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]), 0.1)
    np.testing.assert_array_equal(sets, [[True, False, False], [False, False, True]])
    cp.qhat_ = {0.1: 0.95}
    np.testing.assert_array_equal(cp.predict_sets(np.array([[0.6, 0.3, 0.1]]), 0.1),
                                  [[True, True, False]])


def test_selective_threshold_from_validation_controls_test_risk():
    rng = np.random.default_rng(3)
    val, test = synthetic(3000, rng, mc=0.3), synthetic(3000, rng, mc=0.3)
    sel = SelectiveScorer(risk_target=0.05).fit(None, val)
    res = sel.score(test)
    assert set(sel.thresholds_) == {"msp", "mc_msp", "neg_entropy", "neg_mi"}
    assert 0.1 < res["sel_oracle_coverage_at_5pct_risk_msp"] < 0.9
    # the guaranteed (upper-bound) threshold is conservative: risk below target, less coverage
    assert res["sel_val_thr_risk_msp"] <= 0.05
    assert 0 < res["sel_val_thr_coverage_msp"] <= res["sel_oracle_coverage_at_5pct_risk_msp"]
    assert res["sel_val_thr_accepted_msp"] == round(res["sel_val_thr_coverage_msp"] * len(test))
    assert res["sel_aurc_msp"] < 1 - (test.probs.argmax(1) == test.labels).mean()
    no_mc = SelectiveScorer().fit(None, synthetic(200, rng)).score(synthetic(200, rng))
    assert not any("mi" in k or "mc_" in k for k in no_mc)
