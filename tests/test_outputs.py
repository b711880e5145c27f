"""ModelOutputs: the one softmax, computed once per object and never stale."""

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax

from smids_eval.evaluate.base import scaled
from smids_eval.outputs import ModelOutputs, softmax


def outputs(seed=0, n=6):
    rng = np.random.default_rng(seed)
    return ModelOutputs(logits=rng.normal(size=(n, 3)).astype(np.float32) * 4,
                        features=rng.normal(size=(n, 5)), labels=rng.integers(0, 3, n))


def test_softmax_is_float64_rows_summing_to_one_and_shift_invariant():
    z = np.array([[1000.0, 999.0, 0.0], [-3.0, 0.0, 3.0]])
    p = softmax(z)
    assert p.dtype == np.float64 and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_array_equal(p, scipy_softmax(z, axis=1))
    np.testing.assert_allclose(softmax(z - 7.0), p)


def test_probs_are_cached_read_only_and_fresh_for_derived_outputs():
    out = outputs()
    first = out.probs
    assert out.probs is first and not first.flags.writeable
    with pytest.raises(ValueError):
        first[0, 0] = 1.0
    np.testing.assert_array_equal(first, softmax(out.logits))
    half = out.subset(np.arange(3))
    np.testing.assert_array_equal(half.probs, first[:3])
    hot = scaled(out, 0.5)
    np.testing.assert_array_equal(hot.probs, softmax(out.logits / 0.5))
    assert not np.allclose(hot.probs, first)
