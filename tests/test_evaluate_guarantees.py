"""Finite-sample guarantees: risk-controlling selective thresholds, exact conformal ranks,
Mondrian class-conditional coverage, and scorers on folds that lack classes."""

import math

import numpy as np
import pytest
from scipy.special import softmax

from smids_eval.config import EvalConfig
from smids_eval.evaluate import SCORERS
from smids_eval.evaluate.conformal import (
    ConformalPredictor,
    ConformalScorer,
    conformal_quantile,
    new_group_quantile,
)
from smids_eval.evaluate.selective import coverage_at_risk, risk_controlling_threshold
from smids_eval.outputs import ModelOutputs

TARGET, DELTA = 0.1, 0.1


def stream(n, rng):
    """Confidence ~ U(0, 1); P(correct) = 0.75 + 0.25 * confidence (risk falls with confidence)."""
    conf = rng.random(n)
    return conf, rng.random(n) < 0.75 + 0.25 * conf


def violation_rate(select, seeds=300, n_cal=500, n_test=20000):
    """Over seeds, the fraction whose threshold (chosen on n_cal crops) has fresh-draw risk
    > TARGET, and the mean fresh-draw coverage."""
    bad, coverage = 0, 0.0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        _, thr = select(*stream(n_cal, rng))
        conf, correct = stream(n_test, rng)
        accepted = conf >= thr
        bad += accepted.any() and (1 - correct[accepted].mean()) > TARGET
        coverage += accepted.mean() / seeds
    return bad / seeds, coverage


def test_risk_controlling_threshold_violates_at_most_delta():
    rate, coverage = violation_rate(lambda c, y: risk_controlling_threshold(c, y, TARGET, DELTA))
    assert rate <= DELTA + 0.03
    assert coverage > 0.3  # the best threshold (risk exactly TARGET) covers 0.8


def test_point_threshold_violates_far_more_often():
    """The same check fails for the plain empirical threshold, so it has the power to fail."""
    rate, _ = violation_rate(lambda c, y: coverage_at_risk(c, y, TARGET))
    assert rate > 0.3


def test_risk_controlling_threshold_hand_cases():
    # bound after n correct crops: 1 - delta ** (1 / n); n = 1, delta = 0.5 -> 0.5
    assert risk_controlling_threshold([0.9], [1], 0.5, delta=0.5) == (1.0, 0.9)
    assert risk_controlling_threshold([0.9], [1], 0.49, delta=0.5) == (0.0, float("inf"))
    # ties are accepted together: n = 2, k = 0 -> 1 - sqrt(0.1) = 0.684; then n = 3, k = 1 fails
    assert risk_controlling_threshold([0.9, 0.9, 0.1], [1, 1, 0], 0.7, 0.1) == (2 / 3, 0.9)
    assert risk_controlling_threshold([], [], 0.1) == (0.0, float("inf"))


def test_fixed_sequence_stops_at_the_first_failure():
    """30 right, 5 wrong, 200 right: the bound fails at the first error (1 in 31) and the lower
    thresholds whose bound would pass again (5 in 235) are never reached."""
    correct = np.r_[np.ones(30), np.zeros(5), np.ones(200)]
    conf = np.linspace(1, 0, len(correct))
    assert risk_controlling_threshold(conf, correct, 0.1, 0.1) == (30 / 235, conf[29])
    assert coverage_at_risk(conf, correct, 0.1) == (1.0, 0.0)


def test_scan_starts_where_zero_errors_could_pass():
    """Fewer than 22 crops never pass at 10% risk, delta 0.1 (0.9 ** 21 > 0.1 >= 0.9 ** 22): the
    scan starts at 22, not at the single most confident crop (which would always fail)."""
    conf = np.linspace(1, 0, 22)
    assert risk_controlling_threshold(conf, np.ones(22), 0.1, 0.1) == (1.0, 0.0)
    assert risk_controlling_threshold(conf[:21], np.ones(21), 0.1, 0.1) == (0.0, float("inf"))


def test_conformal_quantile_is_the_exact_rank():
    scores = np.array([0.5, 0.1, 0.4, 0.2, 0.3, 0.9, 0.8, 0.7, 0.6])  # n = 9
    # alpha 0.2: ceil(10 * 0.8) = 8th smallest = 0.8; alpha 0.3: ceil(7) = 7th = 0.7
    assert conformal_quantile(scores, 0.2) == 0.8
    assert conformal_quantile(scores, 0.3) == 0.7
    assert conformal_quantile(scores, 0.1) == 0.9          # ceil(9) = 9 = n
    assert conformal_quantile(scores, 0.05) == math.inf    # ceil(9.5) = 10 > n
    assert conformal_quantile(scores[:4], 0.5) == 0.4      # ceil(2.5) = 3rd of .1 .2 .4 .5
    assert conformal_quantile(np.arange(1, 20), 0.05) == 19  # ceil(20 * 0.95) exactly 19


def mixed_difficulty(n, rng):
    """Class 0 easy (confident, right), class 2 hard (flat probabilities), class 1 between."""
    y = rng.integers(0, 3, n)
    strength = np.array([6.0, 2.0, 0.3])[y]
    z = rng.normal(size=(n, 3))
    z[np.arange(n), y] += strength
    return ModelOutputs(logits=z, features=z, labels=y)


def test_mondrian_covers_every_class_where_marginal_undercovers_the_hard_one():
    alpha, cov = 0.1, {"marginal": [], "mondrian": []}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        val, test = mixed_difficulty(600, rng), mixed_difficulty(3000, rng)
        for name, mondrian in (("marginal", False), ("mondrian", True)):
            sets = ConformalPredictor("lac", (alpha,), mondrian).fit(val.probs, val.labels)\
                .predict_sets(test.probs, alpha)
            hit = sets[np.arange(len(test)), test.labels]
            cov[name].append([hit[test.labels == k].mean() for k in range(3)])
    marginal, mondrian = np.mean(cov["marginal"], 0), np.mean(cov["mondrian"], 0)
    assert marginal[2] < 1 - alpha - 0.05
    np.testing.assert_allclose(mondrian, 1 - alpha, atol=0.02)
    assert (mondrian >= 1 - alpha - 0.01).all()  # ~3 standard errors over 40 seeds


def test_mondrian_class_absent_from_validation_is_always_in_the_set():
    rng = np.random.default_rng(0)
    val = mixed_difficulty(300, rng)
    keep = val.labels != 1
    cp = ConformalPredictor("aps", (0.1,), mondrian=True).fit(val.probs[keep], val.labels[keep])
    assert cp.qhat_[0.1][1] == math.inf and np.isfinite(cp.qhat_[0.1][[0, 2]]).all()
    assert cp.predict_sets(val.probs, 0.1)[:, 1].all()


def test_conformal_scorer_per_class_and_group_keys():
    rng = np.random.default_rng(1)
    val, test = mixed_difficulty(500, rng), mixed_difficulty(500, rng)
    test = ModelOutputs(test.logits, test.features, test.labels, groups=np.arange(500) % 7)
    assert not any("newgroups" in k for k in ConformalScorer(alphas=(0.1,)).fit(None, val)
                   .score(test))  # validation without groups: no new-group calibration
    val = ModelOutputs(val.logits, val.features, val.labels, groups=np.arange(500) % 5)
    res = ConformalScorer(alphas=(0.1,)).fit(None, val).score(test)
    for prefix in ("cp_lac", "cp_aps", "cp_lac_mondrian", "cp_aps_mondrian", "cp_lac_newgroups",
                   "cp_lac_mondrian_newgroups"):
        for metric in ("coverage", "set_size", "coverage_normal_sperm", "coverage_non_sperm",
                       "min_group_coverage"):
            assert np.isfinite(res[f"{prefix}_{metric}_a0.1"]), (prefix, metric)
        assert res[f"{prefix}_min_group_coverage_a0.1"] <= res[f"{prefix}_coverage_a0.1"]


def acquisition_groups(k, n, rng, first=0):
    """``k`` groups of ``n`` crops (classes as ``mixed_difficulty``) whose acquisition scales
    every class's separation by its own lognormal factor: crops of a group share it."""
    z, y, g = [], [], []
    for group in range(first, first + k):
        labels = rng.integers(0, 3, n)
        logits = rng.normal(size=(n, 3))
        logits[np.arange(n), labels] += np.array([4.0, 2.0, 1.0])[labels] * rng.lognormal(0, 0.6)
        z.append(logits), y.append(labels), g.append(np.full(n, group))
    z = np.concatenate(z)
    return ModelOutputs(logits=z, features=z, labels=np.concatenate(y), groups=np.concatenate(g))


def test_new_group_calibration_covers_new_groups_where_the_exchangeable_rank_undercovers():
    """Validation of 5 acquisition groups, test on 4 new ones (a fold of the real copy): the
    exchangeable class-conditional rank under-covers the new groups; the new-group rank
    reaches 1 - alpha in every class (averaged over 150 draws)."""
    alpha, cov = 0.1, {False: [], True: []}
    for seed in range(150):
        rng = np.random.default_rng(seed)
        val, test = acquisition_groups(5, 150, rng), acquisition_groups(4, 150, rng, first=10)
        for new_groups in cov:
            sets = ConformalPredictor("lac", (alpha,), True, new_groups)\
                .fit(val.probs, val.labels, val.groups).predict_sets(test.probs, alpha)
            hit = sets[np.arange(len(test)), test.labels]
            cov[new_groups].append([hit[test.labels == k].mean() for k in range(3)])
    exchangeable, new_groups = np.mean(cov[False], 0), np.mean(cov[True], 0)
    assert exchangeable.min() < 1 - alpha - 0.02
    assert (new_groups >= 1 - alpha - 0.01).all()


def test_new_group_quantile_hand_cases():
    rng = np.random.default_rng(0)
    scores = rng.random(40)
    # one group: the exchangeable rank; never below it; every group covered: the same rank
    assert new_group_quantile(scores, np.zeros(40), 0.1) == conformal_quantile(scores, 0.1)
    for groups in (np.arange(40) % 4, np.arange(40) // 10):
        assert new_group_quantile(scores, groups, 0.1) >= conformal_quantile(scores, 0.1)
    # group 1 scores above group 0: group 0's scores cover none of it at any rank below the
    # top, so the threshold climbs to the largest score (the exchangeable rank: the 37th)
    low, high = np.linspace(0, 0.4, 20), np.linspace(0.6, 1, 20)
    groups = np.r_[np.zeros(20), np.ones(20)]
    assert new_group_quantile(np.r_[low, high], groups, 0.1) == 1.0
    assert conformal_quantile(np.r_[low, high], 0.1) == high[16]
    assert new_group_quantile(scores[:5], np.arange(5) % 2, 0.1) == math.inf  # rank 6 of 5
    # three groups of the same scores: LOGO coverage at rank k is that of the same scores;
    # 10 / 11 of each group -> rank 10 of 30 -> the exchangeable rank already covers
    same = np.tile(np.arange(1, 11) / 10, 3)
    assert new_group_quantile(same, np.repeat([0, 1, 2], 10), 0.1) == conformal_quantile(same, 0.1)
    with pytest.raises(ValueError, match="groups"):
        ConformalPredictor("lac", (0.1,), new_groups=True).fit(np.eye(3), np.arange(3))


def outputs(n, classes, rng, mc=False):
    z = rng.normal(size=(n, 3)) * 2
    mc_probs = softmax(z[None] + rng.normal(size=(5, n, 3)), axis=2) if mc else None
    return ModelOutputs(logits=z, features=z, labels=rng.choice(classes, size=n),
                        mc_probs=mc_probs, groups=rng.integers(0, 3, n))


@pytest.mark.parametrize("val_classes, test_classes", [
    ([0, 1, 2], [1]), ([0, 1, 2], [0, 2]), ([0, 1], [0, 1, 2]), ([2], [0, 1]), ([0, 2], [2])])
@pytest.mark.parametrize("mc", [False, True])
def test_every_scorer_survives_folds_lacking_classes(val_classes, test_classes, mc):
    rng = np.random.default_rng(len(test_classes))
    val, test = outputs(120, val_classes, rng, mc), outputs(40, test_classes, rng, mc)
    res = {}
    for scorer in SCORERS.values():
        res.update(scorer.from_config(EvalConfig()).fit(None, val).score(test))
    assert all(isinstance(v, float) for v in res.values())
    for k, slug in enumerate(("normal_sperm", "abnormal_sperm", "non_sperm")):
        absent = k not in test_classes
        assert math.isnan(res[f"cls_recall_{slug}"]) == absent
        assert math.isnan(res[f"cp_lac_coverage_{slug}_a0.1"]) == absent
    for key in ("cal_ece", "cal_ace", "cal_ace_equal_width", "cal_ece_ts", "cal_temperature",
                "cls_nll", "cls_brier", "sel_aurc_msp", "cp_aps_mondrian_coverage_a0.05"):
        assert np.isfinite(res[key]), key
    if mc:
        assert np.isfinite(res["mc_ece_delta"])
