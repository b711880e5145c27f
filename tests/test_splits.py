"""Grouped nested CV: no group on both sides of any split, determinism, CSV round trip."""

from __future__ import annotations

import numpy as np
import pytest

from smids_eval.errors import ConfigError
from smids_eval.splits import LeakageError, SplitPlan, check_no_leakage, make_splits


def _data(n=600, n_groups=17, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.array([f"donor_{g:02d}" for g in rng.integers(0, n_groups, n)])
    labels = rng.integers(0, 3, n)
    return labels, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("outer_k,inner_k", [(2, 2), (5, 3), (17, 4)])
def test_no_group_straddles_any_split(seed, outer_k, inner_k):
    labels, groups = _data(seed=seed)
    plan = make_splits(labels, groups, outer_k, inner_k, seed)
    assert plan.n_outer == outer_k and plan.n_inner == inner_k
    seen_test = np.zeros(len(labels), dtype=int)
    for f in range(outer_k):
        train, test = plan.outer(f)
        assert not set(groups[train]) & set(groups[test])
        seen_test[test] += 1
        inner_val = np.zeros(len(labels), dtype=int)
        for j in range(inner_k):
            itrain, ival = plan.inner(f, j)
            assert not set(groups[itrain]) & set(groups[ival])
            assert not set(ival) & set(test) and not set(itrain) & set(test)
            inner_val[ival] += 1
        assert (inner_val[train] == 1).all()
    assert (seen_test == 1).all()  # every image tested exactly once


def test_leave_one_donor_out():
    labels, groups = _data()
    plan = make_splits(labels, groups, outer_k=17, inner_k=2)
    for f in range(17):
        assert len(set(groups[plan.outer(f)[1]])) == 1


def test_deterministic_and_csv_round_trip(tmp_path):
    labels, groups = _data()
    a = make_splits(labels, groups, 5, 3, seed=7)
    b = make_splits(labels, groups, 5, 3, seed=7)
    c = make_splits(labels, groups, 5, 3, seed=8)
    np.testing.assert_array_equal(a.outer_fold, b.outer_fold)
    np.testing.assert_array_equal(a.inner_fold, b.inner_fold)
    assert (a.outer_fold != c.outer_fold).any()
    frame = a.to_frame([f"img{i}.png" for i in range(len(labels))])
    frame.to_csv(tmp_path / "splits.csv", index=False)
    import pandas as pd
    back = SplitPlan.from_frame(pd.read_csv(tmp_path / "splits.csv", dtype={"group": str}), seed=7)
    np.testing.assert_array_equal(back.inner_fold, a.inner_fold)
    back.check()


def test_leakage_check_raises():
    groups = np.array(["a", "a", "b", "c"])
    with pytest.raises(LeakageError, match="'a'|a"):
        check_no_leakage(groups, np.array([0, 2]), np.array([1, 3]))
    check_no_leakage(groups, np.array([0, 1]), np.array([2, 3]))


def test_tampered_plan_fails_its_check():
    labels, groups = _data()
    plan = make_splits(labels, groups, 5, 3)
    i = np.flatnonzero(plan.outer_fold == 0)[0]
    j = np.flatnonzero((groups == groups[i]) & (plan.outer_fold != 0))
    assert j.size == 0
    plan.outer_fold[np.flatnonzero(groups == groups[i])[:1]] = 1  # move one image of the donor
    with pytest.raises(LeakageError):
        plan.check()


def test_too_many_folds_is_a_clear_error():
    labels, groups = _data(n_groups=4)
    with pytest.raises(ConfigError, match="at least 5 groups, but there are 4"):
        make_splits(labels, groups, outer_k=5, inner_k=2)


def test_plain_stratified_split_ignores_groups():
    labels, groups = _data()
    plan = make_splits(labels, groups, 5, 3, grouped=False)
    shared = set(groups[plan.outer(0)[0]]) & set(groups[plan.outer(0)[1]])
    assert shared  # donors straddle: that is the optimism the grouped split removes
