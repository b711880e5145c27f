"""OOD metrics on hand-checkable cases and detectors on synthetic smear-like images seen through
a fixed hand-made feature extractor and a logistic-regression "model"."""

from dataclasses import replace

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from smids_eval.evaluate.descriptors import describe
from smids_eval.evaluate.ood import DETECTORS, OODScorer, new_group_threshold, ood_metrics
from smids_eval.evaluate.shifts import apply_shift, shift_key
from smids_eval.outputs import ModelOutputs

SIZE = 32


def smear_images(n, rng):
    """Pale stained background with one dark cell per crop: oval head + tail (class 0), large
    irregular head + tail (class 1), larger brownish debris without tail (class 2)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    labels = rng.integers(0, 3, n)
    images = np.empty((n, SIZE, SIZE, 3))
    for i, c in enumerate(labels):
        img = np.array([225.0, 205, 220]) + rng.normal(0, 6, (SIZE, SIZE, 3))
        cy, cx = rng.uniform(12, 20, 2)
        a, b = {0: (4, 2.5), 1: (6, 4), 2: (5, 5)}[c]
        if c == 1:
            a, b = a * rng.uniform(0.8, 1.3), b * rng.uniform(0.7, 1.4)
        head = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
        img[head] = np.array([[90.0, 40, 110], [90, 40, 110], [140, 95, 80]][c]) + rng.normal(0, 10, 3)
        if c != 2:
            tail = (np.abs(xx - cx) <= 1.0) & (yy > cy + a) & (yy < cy + a + 10)
            img[tail] = [120, 80, 140]
        images[i] = img
    return np.clip(images, 0, 255).astype(np.uint8), labels


def features(images):
    """Per-channel mean and std plus per-channel gradient energy (a fixed 'backbone')."""
    x = images.astype(float) / 255
    gy, gx = np.gradient(x, axis=(1, 2))
    energy = np.log((gx ** 2 + gy ** 2).mean(axis=(1, 2)) + 1e-6)
    return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2)), energy], axis=1)


@pytest.fixture(scope="module")
def model_and_sets():
    rng = np.random.default_rng(0)
    imgs, labels = smear_images(600, rng)
    feats = features(imgs)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(feats[:300], labels[:300])

    def outputs(images, y=None):
        f = features(images)
        return ModelOutputs(logits=clf.decision_function(f), features=f, labels=y,
                            descriptors=describe(images))

    train, val = outputs(imgs[:300], labels[:300]), outputs(imgs[300:450], labels[300:450])
    test_imgs = imgs[450:]
    test = outputs(test_imgs, labels[450:])
    shifted = {shift_key(name, 3): outputs(apply_shift(test_imgs, name, 3, seed=1), labels[450:])
               for name in ("defocus_blur", "stain")}
    return train, val, test, shifted


def test_hand_checkable_ood_metrics():
    perfect = ood_metrics(np.array([3.0, 4, 5]), np.array([0.0, 1, 2]))
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    reversed_ = ood_metrics(np.array([0.0, 1, 2]), np.array([3.0, 4, 5]))
    assert reversed_["auroc"] == 0.0 and reversed_["fpr95"] == 1.0
    partial = ood_metrics(np.array([1.0, 2, 3, 4]), np.array([0.0, 2.5]))
    assert partial["auroc"] == pytest.approx(6 / 8)  # in beats out in 6 of 8 pairs
    assert partial["fpr95"] == pytest.approx(0.5)    # keeping all 4 ID admits 2.5


def test_model_learns_and_strong_shift_is_detected(model_and_sets):
    train, val, test, shifted = model_and_sets
    assert (test.probs.argmax(1) == test.labels).mean() > 0.8
    res = OODScorer().fit(train, val).score_sets(test, shifted)
    assert not any("mc_mi" in k for k in res)  # no MC samples -> MC detector skipped
    assert not any("block_moments" in k for k in res)  # no such descriptor -> skipped
    for name in ("defocus_blur_s3", "stain_s3"):
        best = max(res[f"ood_{name}_{d}_auroc"] for d in DETECTORS
                   if d not in ("mc_mi", "block_moments"))
        assert best > 0.9, (name, best)
        # the acquisition detector sees both shifts, and the in-distribution rule flags them
        assert res[f"ood_{name}_image_stats_auroc"] > 0.95, name
        assert res[f"ood_{name}_in_distribution_flagged"] > 0.9, name
    assert res["ood_heldout_in_distribution_flagged"] < 0.15  # false alarms on the same source
    assert res["ood_defocus_blur_s3_mahalanobis_auroc"] > 0.9
    assert res["ood_defocus_blur_s3_knn_fpr95"] < 0.5


def test_threshold_keeps_95_percent_of_validation(model_and_sets):
    train, val, test, _ = model_and_sets
    for name in ("msp", "energy", "mahalanobis", "knn"):
        det = DETECTORS[name]().fit(train, val)
        assert det.is_in_distribution(val).mean() >= 0.95
        assert det.is_in_distribution(test).mean() > 0.8


def test_mc_mutual_information_detector_needs_samples(model_and_sets):
    train, val, _, _ = model_and_sets
    with pytest.raises(ValueError, match="mc_probs"):
        DETECTORS["mc_mi"]().fit(train, val)


def test_semantic_threshold_keeps_its_share_of_new_acquisition_groups():
    """Validation crops come in few groups, each shifting the scores by its own offset: the plain
    validation quantile keeps less than ``keep`` of a new group (the power of this test to fail),
    the new-group threshold keeps it (means over 200 draws of 5 validation and 20 new groups)."""
    rng = np.random.default_rng(0)
    plain, new = [], []
    for _ in range(200):
        groups = np.repeat(np.arange(5), 60)
        val = rng.normal(0, 0.5, 5)[groups] + rng.normal(0, 1, 300)
        test = rng.normal(0, 0.5, (20, 1)) + rng.normal(0, 1, (20, 60))
        plain.append((test >= np.quantile(val, 0.025, method="lower")).mean())
        new.append((test >= new_group_threshold(val, groups, 0.975)).mean())
    assert np.mean(plain) < 0.970 and np.mean(new) >= 0.972


def test_detectors_use_the_new_group_threshold_when_validation_has_groups(model_and_sets):
    train, val, _, _ = model_and_sets
    grouped = replace(val, groups=np.arange(len(val)) % 4)
    for name in ("msp", "knn"):
        det = DETECTORS[name]().fit(train, grouped)
        assert det.threshold_ == new_group_threshold(det.score(grouped), grouped.groups, det.keep)
        plain = DETECTORS[name]().fit(train, val)   # no groups: the validation quantile
        assert plain.threshold_ == np.quantile(plain.score(val), 0.05, method="lower")
    # one group, or too few crops for the conformal rank: the plain quantile
    scores = np.arange(10.0)
    assert new_group_threshold(scores, np.zeros(10), 0.95) == 0.0
    assert new_group_threshold(scores, np.arange(10) % 2, 0.975) == 0.0
