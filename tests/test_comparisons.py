"""Paired comparisons: Bayesian correlated t-test, the pre-specified family, Holm within it,
the Wilcoxon column's reachability, and ``tied_with_best``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from smids_eval.metric_names import metric_name, parts_frame
from smids_eval.report.comparisons import (
    bayesian_correlated_t,
    compare,
    corrected_t_test,
    family,
    holm,
    tied_with_best,
)
from smids_eval.report.leaderboard import summarise

RATIO = 0.25  # n_test / n_fit of the frames below (20 held out, 80 fitted)


def make_folds(means: dict[tuple[str, str], float], repeats: int = 2, folds: int = 5,
               noise: float = 0.01, seed: int = 0, aliases: dict | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    fold_effect = rng.normal(0, 0.02, size=(repeats, folds))  # shared by every arm (pairing)
    rows = []
    for (variant, setting), mean in means.items():
        for r in range(repeats):
            for k in range(folds):
                score = mean + fold_effect[r, k] + rng.normal(0, noise)
                rows.append({"variant": variant, "setting": setting, "repeat": r, "fold": k,
                             "n_test": 20, "n_fit": 80, "cls_macro_f1": score,
                             "cls_accuracy": score + 0.01,
                             "aliases": (aliases or {}).get((variant, setting), "")})
    return pd.DataFrame(rows)


SMALL = {("F.0", "tuned"): 0.80, ("F.0", "specified"): 0.78, ("B.0", "tuned"): 0.70,
         ("B.0", "specified"): 0.79, ("F.0+RF", "rf"): 0.75}


# --------------------------------------------------------------------------- Bayesian test


def test_bayesian_correlated_t_matches_closed_form_and_monte_carlo():
    rng = np.random.default_rng(1)
    diff = rng.normal(0.012, 0.02, size=10)
    better, equivalent, worse = bayesian_correlated_t(diff, RATIO, rope=0.01)
    n, m, s2 = len(diff), diff.mean(), diff.var(ddof=1)
    scale = np.sqrt((1 / n + RATIO) * s2)  # rho/(1-rho) = n_test/n_fit
    assert better == pytest.approx(stats.t.sf((0.01 - m) / scale, n - 1))
    assert worse == pytest.approx(stats.t.cdf((-0.01 - m) / scale, n - 1))
    assert better + equivalent + worse == pytest.approx(1.0)
    # Monte Carlo: mean + scale · t_{n−1}
    draws = m + scale * rng.standard_t(n - 1, size=400_000)
    assert better == pytest.approx((draws > 0.01).mean(), abs=0.005)
    assert equivalent == pytest.approx((np.abs(draws) <= 0.01).mean(), abs=0.005)
    assert worse == pytest.approx((draws < -0.01).mean(), abs=0.005)
    # a wider ROPE only moves mass to "equivalent"; rho = 0 gives the naive (narrower) posterior
    assert bayesian_correlated_t(diff, RATIO, rope=0.05)[1] > equivalent
    assert bayesian_correlated_t(diff, 0.0, rope=0.01)[0] > better


def test_bayesian_correlated_t_zero_variance_and_too_few():
    assert bayesian_correlated_t(np.full(6, 0.03), RATIO, 0.01) == (1.0, 0.0, 0.0)
    assert bayesian_correlated_t(np.full(6, 0.005), RATIO, 0.01) == (0.0, 1.0, 0.0)
    assert bayesian_correlated_t(np.full(6, -0.02), RATIO, 0.01) == (0.0, 0.0, 1.0)
    assert all(np.isnan(bayesian_correlated_t(np.array([0.1]), RATIO, 0.01)))
    assert all(np.isnan(corrected_t_test(np.full(6, 0.03), RATIO)))


# --------------------------------------------------------------------------- the family


def test_family_composition_on_a_small_frame():
    folds = make_folds(SMALL)
    questions = {(a, b) for a, b, _ in family(folds)}
    assert questions == {
        ("B.0 [tuned]", "F.0 [tuned]"), ("B.0 [specified]", "F.0 [specified]"),  # vs reference
        ("F.0 [tuned]", "F.0 [specified]"), ("B.0 [tuned]", "B.0 [specified]"),  # tuning
        ("F.0 [tuned]", "F.0+RF [rf]"),  # neural (tuned: the RF row's "rf" is no neural setting)
    }
    comps = compare(folds)
    pre = comps[comps["family"] == "prespecified"]
    assert len(pre) == 5 * 2  # two metrics in the frame
    assert set(pre["metric"]) == {"cls_macro_f1", "cls_accuracy"}
    explore = comps[comps["family"] == "exploratory"]
    assert len(explore) == 2 * (10 - 5)  # 5 arms → 10 pairs, the other 5 exploratory
    for col in ["p_better", "p_equivalent", "p_worse", "p_corrected_t", "p_holm", "question"]:
        assert col in comps, col
    # orientation: a − b; B.0 tuned is clearly below F.0 tuned
    row = pre[(pre.metric == "cls_macro_f1") & (pre.a == "B.0 [tuned]") & (pre.b == "F.0 [tuned]")]
    assert row["mean_diff"].iloc[0] < -0.05 and row["p_worse"].iloc[0] > 0.95


def test_aliases_resolve_to_the_computed_arm_and_are_not_compared_twice():
    # F.2's tuned arm is F.0's tuned arm (only F.0 [tuned] is in folds.csv.gz)
    means = {("F.0", "tuned"): 0.80, ("F.0", "specified"): 0.78, ("F.2", "specified"): 0.76}
    folds = make_folds(means, aliases={("F.0", "tuned"): "F.2"})
    questions = family(folds)
    pairs = [frozenset((a, b)) for a, b, _ in questions]
    assert len(pairs) == len(set(pairs))
    assert all(a != b for a, b, _ in questions)
    asked = {(a, b): q for a, b, q in questions}
    assert "F.2: tuned vs specified" in asked[("F.0 [tuned]", "F.2 [specified]")]
    assert ("F.2 [specified]", "F.0 [specified]") in asked
    assert not any("F.2 [tuned]" in (a, b) for a, b, _ in questions)


def test_holm_is_applied_within_the_prespecified_family_only():
    comps = compare(make_folds(SMALL))
    assert comps.loc[comps.family == "exploratory", "p_holm"].isna().all()
    for _, part in comps[comps.family == "prespecified"].groupby("metric"):
        expected = holm(part["p_corrected_t"].to_numpy())
        np.testing.assert_allclose(part["p_holm"].to_numpy(), expected)
        assert (part["p_holm"].dropna() >= part["p_corrected_t"].dropna()).all()
    # the family size, not the number of all pairs, is the Holm multiplier of the smallest p
    part = comps[(comps.family == "prespecified") & (comps.metric == "cls_macro_f1")]
    smallest = part.loc[part["p_corrected_t"].idxmin()]
    assert smallest["p_holm"] == pytest.approx(min(1.0, 5 * smallest["p_corrected_t"]))
    only = compare(make_folds(SMALL), exploratory=False)
    assert set(only["family"]) == {"prespecified"}


def test_holm_known_values():
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, np.nan, 0.03])),
                               [0.03, 0.06, np.nan, 0.06])


# --------------------------------------------------------------------------- Wilcoxon


def test_wilcoxon_dropped_when_it_cannot_reach_alpha():
    five = compare(make_folds(SMALL, repeats=1, folds=5))
    assert "p_wilcoxon" not in five  # 2 / 2⁵ = 0.0625 > 0.05
    ten = compare(make_folds(SMALL, repeats=2, folds=5))
    assert "p_wilcoxon" in ten and ten["p_wilcoxon"].notna().all()
    assert 2 / 2**6 < 0.05 < 2 / 2**5


# --------------------------------------------------------------------------- tied with the best


def test_tied_with_best_marks_the_best_and_equal_arms_not_the_clearly_worse():
    means = {("F.0", "tuned"): 0.80, ("B.0", "tuned"): 0.799, ("A.0", "tuned"): 0.70}
    folds = make_folds(means, noise=0.003)
    ties = tied_with_best(folds).set_index("variant")
    assert not bool(ties.loc["A.0", "tied_with_best"])
    assert ties.loc["A.0", "p_worse_than_best"] > 0.95
    best = folds.groupby("variant")["cls_macro_f1"].mean().idxmax()
    assert bool(ties.loc[best, "tied_with_best"])
    assert bool(ties.loc["F.0", "tied_with_best"]) and bool(ties.loc["B.0", "tied_with_best"])
    board = summarise(folds, parts_frame([metric_name("classification", "macro_f1"),
                                          metric_name("classification", "accuracy")]))
    assert "tied_with_best" in board
    assert board.set_index("variant")["tied_with_best"].to_dict() == {
        "F.0": True, "B.0": True, "A.0": False}
    assert bool(board["tied_with_best"].iloc[0])  # the leaderboard's top row is the best
