"""Batch-level shift test: MMD with permutation p-values, and the group-calibrated null."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from smids_eval.evaluate.batch_shift import BatchShiftResult, BatchShiftTest, mmd_test

D = 8


def _mixture(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Three-component Gaussian mixture in D dims; ``shift`` moves the first 3 dims (in sd)."""
    centres = np.zeros((3, D))
    centres[1, 0], centres[2, 1] = 2.0, -2.0
    x = centres[rng.integers(0, 3, n)] + rng.normal(size=(n, D))
    x[:, :3] += shift
    return x


def _grouped(rng: np.random.Generator, n_groups: int = 12, per_group: int = 30,
             tau: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Reference from ``n_groups`` sessions, each with its own N(0, tau²) offset per dim."""
    offsets = rng.normal(0, tau, (n_groups, D))
    x = np.concatenate([o + rng.normal(size=(per_group, D)) for o in offsets])
    return x, np.repeat(np.arange(n_groups), per_group)


def _session(rng: np.random.Generator, n: int, tau: float = 0.3, extra: float = 0.0):
    """A new session: fresh offset from the same distribution, plus ``extra`` in 3 dims."""
    offset = rng.normal(0, tau, D)
    offset[:3] += extra
    return offset + rng.normal(size=(n, D))


def test_same_distribution_is_rarely_rejected():
    p = np.array([mmd_test(_mixture(np.random.default_rng([s, 0]), 200),
                           _mixture(np.random.default_rng([s, 1]), 50), seed=s).p_value
                  for s in range(40)])
    assert np.mean(p > 0.01) >= 0.95
    assert 0.3 < p.mean() < 0.7  # roughly uniform under the null
    assert p.min() >= 1 / 501


def test_mean_shift_is_detected():
    for s in range(5):
        res = mmd_test(_mixture(np.random.default_rng([s, 0]), 200),
                       _mixture(np.random.default_rng([s, 1]), 50, shift=1.0), seed=s)
        assert res.p_value < 0.01
        assert res.method == "permutation" and res.n_null == 500
        assert (res.n_batch, res.n_reference) == (50, 200)
        assert res.statistic > 0


def test_deterministic_for_a_seed_and_reference_subsampled():
    rng = np.random.default_rng(0)
    ref, batch = _mixture(rng, 700), _mixture(rng, 40, shift=0.2)
    first, second = mmd_test(ref, batch, seed=3), mmd_test(ref, batch, seed=3)
    assert first == second
    assert first.n_reference == 700
    assert BatchShiftTest(seed=3).fit(ref).reference_.shape == (500, D)
    x, g = _grouped(np.random.default_rng(1))
    new = _session(np.random.default_rng(2), 50)
    a, b = (BatchShiftTest(seed=5).fit(x, g).test(new) for _ in range(2))
    assert a == b and a.method == "group_calibrated"


def test_group_calibrated_accepts_new_sessions_and_rejects_far_ones():
    new_ok, perm_rejects, methods = [], [], set()
    for s in range(20):
        rng = np.random.default_rng(s)
        x, g = _grouped(rng)
        test = BatchShiftTest(seed=s).fit(x, g)
        new = _session(rng, 50)
        res = test.test(new)
        methods.add(res.method)
        new_ok.append(res.p_value >= 0.01)
        perm_rejects.append(mmd_test(x, new, n_permutations=200, seed=s).p_value < 0.01)
        far = test.test(_session(rng, 50, extra=2.5))
        assert far.p_value < 0.01, (s, far)
    assert methods == {"group_calibrated"}
    assert np.mean(new_ok) >= 0.85
    # the reason for the group null: the plain permutation test rejects most new sessions
    assert np.mean(perm_rejects) >= 0.5


def test_group_method_needs_enough_groups():
    rng = np.random.default_rng(0)
    x, g = _grouped(rng, n_groups=4, per_group=40)
    batch = _session(rng, 30)
    assert BatchShiftTest(n_permutations=50).fit(x, g).test(batch).method == "permutation"
    x, g = _grouped(rng, n_groups=8, per_group=8)  # groups below min_group_size
    assert BatchShiftTest(n_permutations=50).fit(x, g).test(batch).method == "permutation"
    assert BatchShiftTest(n_permutations=50).fit(x).test(batch).method == "permutation"
    x, g = _grouped(rng, n_groups=6, per_group=12)
    test = BatchShiftTest(method="permutation", n_permutations=50).fit(x, g)
    assert test.test(batch).method == "permutation"
    assert BatchShiftTest().fit(x, g).test(batch).method == "group_calibrated"


def test_result_is_json_serialisable_and_test_picklable():
    x, g = _grouped(np.random.default_rng(0))
    test = BatchShiftTest(seed=1).fit(x, g)
    batch = _session(np.random.default_rng(1), 25)
    res = test.test(batch)
    payload = json.loads(json.dumps(res.as_dict()))
    assert payload["method"] == "group_calibrated" and payload["n_null"] == 12
    assert set(payload) >= {"statistic", "p_value", "n_batch", "n_reference", "method"}
    assert BatchShiftResult(**payload) == res
    perm = mmd_test(x, batch, n_permutations=20).as_dict()
    assert perm["null_log_mean"] is None and json.dumps(perm)
    clone = pickle.loads(pickle.dumps(test))
    assert clone.test(batch) == res
    assert len(pickle.dumps(test)) < 40_000


def test_constant_features_and_bad_input():
    rng = np.random.default_rng(0)
    ref, batch = _mixture(rng, 100), _mixture(rng, 30)
    ref[:, 4] = batch[:, 4] = 7.0  # zero std: guarded, not NaN
    res = mmd_test(ref, batch, n_permutations=50)
    assert np.isfinite(res.statistic) and 0 < res.p_value <= 1
    with pytest.raises(ValueError, match="expected 8 features"):
        BatchShiftTest().fit(ref).test(batch[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        mmd_test(ref, np.full((5, D), np.nan))
    with pytest.raises(ValueError, match="method"):
        BatchShiftTest(method="magic")
    with pytest.raises(RuntimeError, match="before fit"):
        BatchShiftTest().test(batch)
