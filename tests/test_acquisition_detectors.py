"""Acquisition-level OOD detectors on real computations: image statistics and early-block
moments of a tiny random VGG19, each fitted on one smear distribution, keeping a held-out sample
of it and flagging a shifted one; the in-distribution rule on noise, blank and 1x1 images."""

import numpy as np
import pytest
from test_evaluate_ood import SIZE, smear_images
from tiny_vgg import WIDTH

from smids_eval.evaluate.descriptors import (
    IMAGE_STAT_NAMES,
    block_moments,
    block_moments_width,
    describe,
)
from smids_eval.evaluate.ood import DETECTORS, InDistribution
from smids_eval.evaluate.shifts import apply_shift
from smids_eval.models import build_vgg19
from smids_eval.outputs import ModelOutputs


@pytest.fixture(scope="module")
def prefix():
    return build_vgg19(width=WIDTH, size=SIZE, init_seed=0).prefix.eval()


def outputs(images, prefix, labels=None):
    """Outputs of a stand-in classifier (logits from colour means) with real descriptors."""
    x = images.astype(float).mean(axis=(1, 2)) / 255
    return ModelOutputs(logits=x @ np.eye(3) * 5, features=x, labels=labels,
                        descriptors=describe(images, prefix, "rgb"))


@pytest.fixture(scope="module")
def sets(prefix):
    rng = np.random.default_rng(1)
    images, labels = smear_images(700, rng)
    split = {"train": slice(0, 400), "val": slice(400, 550), "test": slice(550, 700)}
    out = {k: outputs(images[s], prefix, labels[s]) for k, s in split.items()}
    test_images = images[550:]
    for shift in ("hed_stain", "grey", "gaussian_noise", "zoom_out", "pseudo_colour"):
        out[shift] = outputs(apply_shift(test_images, shift, 3, seed=0), prefix)
    return out


def test_descriptors_are_finite_for_flat_and_tiny_images(prefix):
    flat = np.full((3, SIZE, SIZE, 3), 200, np.uint8)
    flat[1] = 0
    d = describe(flat, prefix, "rgb")
    assert d["image_stats"].shape == (3, len(IMAGE_STAT_NAMES))
    assert d["block_moments"].shape == (3, block_moments_width(WIDTH))
    assert all(np.isfinite(v).all() for v in d.values())
    # a prefix with fewer than two blocks has no block moments
    shallow = build_vgg19(width=WIDTH, size=SIZE, unfreeze_blocks=4).prefix
    assert block_moments(shallow, flat, "rgb") is None


@pytest.mark.parametrize("width, channels", [(WIDTH, "grey"), (0.3, "rgb"), (0.01, "rgb")])
def test_block_moments_width_is_the_width_of_the_moments_computed(width, channels):
    """What the probe sizes its stand-in descriptors by is what a prefix of that width gives,
    for grey input and for widths that round channels (0.01: one channel per conv)."""
    prefix = build_vgg19(in_channels=1 if channels == "grey" else 3, width=width, size=SIZE,
                         unfreeze_blocks=3).prefix.eval()
    images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    assert block_moments(prefix, images, channels).shape == (2, block_moments_width(width))


@pytest.mark.parametrize("name", ["image_stats", "block_moments"])
def test_detector_keeps_its_distribution_and_flags_shifts(sets, name):
    det = DETECTORS[name]().fit(sets["train"], sets["val"])
    assert det.level == "acquisition"
    assert det.is_in_distribution(sets["val"]).mean() >= 0.95
    assert det.is_in_distribution(sets["test"]).mean() >= 0.85  # held out, same source
    flagged = {s: 1 - det.is_in_distribution(sets[s]).mean()
               for s in ("hed_stain", "grey", "gaussian_noise", "zoom_out", "pseudo_colour")}
    assert min(flagged.values()) >= 0.9, flagged


def test_detector_needs_its_descriptor(sets):
    bare = ModelOutputs(sets["val"].logits, sets["val"].features, sets["val"].labels)
    with pytest.raises(ValueError, match="image_stats"):
        DETECTORS["image_stats"]().fit(bare, bare)


def test_rule_refers_noise_blank_and_one_pixel_images(sets, prefix):
    rule = InDistribution(0.95, 0.975, acquisition="image_stats", semantic="msp")
    rule.fit(sets["train"], sets["val"])
    assert rule.names == ("image_stats", "msp") and rule.threshold_ == 0.0
    rng = np.random.default_rng(3)
    odd = np.stack([rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8),      # noise
                    np.full((SIZE, SIZE, 3), 255, np.uint8),                      # blank
                    np.broadcast_to(np.array([120, 80, 140], np.uint8),           # 1x1 upscaled
                                    (SIZE, SIZE, 3)).copy()])
    assert not rule.is_in_distribution(outputs(odd, prefix)).any()
    # both parts must keep an image: in-distribution overall <= each part's share
    test = sets["test"]
    both = rule.is_in_distribution(test)
    for share in (m >= 0 for m in rule.margins(test).values()):
        assert both.mean() <= share.mean()
    assert both.mean() >= 0.85


def _grouped_descriptors(rng, n_groups: int, per_group: int, dims: int = 6, spread: float = 1.0):
    """Descriptor vectors of acquisition groups: each group has its own offset (another day,
    slide or setting of the same lab) around the lab's mean, plus within-group noise."""
    offsets = rng.normal(0, spread, (n_groups, dims))
    x = np.concatenate([o + rng.normal(0, 0.5, (per_group, dims)) for o in offsets])
    return x, np.repeat(np.arange(n_groups), per_group).astype(str)


def _desc_outputs(x, groups=None):
    return ModelOutputs(logits=np.zeros((len(x), 3)), features=x, groups=groups,
                        descriptors={"image_stats": x})


def test_threshold_is_calibrated_on_new_acquisition_groups():
    """With groups, the acquisition threshold keeps ~95% of NEW groups (leave-one-group-out);
    a validation split of the same groups would keep far fewer of them."""
    rng = np.random.default_rng(3)
    flagged, flagged_ungrouped = [], []
    for _ in range(6):
        x, g = _grouped_descriptors(rng, 12, 40)
        is_train = rng.random(len(x)) < 0.8  # val shares the training groups
        train, val = _desc_outputs(x[is_train], g[is_train]), _desc_outputs(x[~is_train], g[~is_train])
        new_x, _ = _grouped_descriptors(rng, 10, 40)  # ten new groups of the same lab
        det = DETECTORS["image_stats"]().fit(train, val)
        flagged.append(1 - det.is_in_distribution(_desc_outputs(new_x)).mean())
        plain = DETECTORS["image_stats"]().fit(_desc_outputs(x[is_train]), _desc_outputs(x[~is_train]))
        flagged_ungrouped.append(1 - plain.is_in_distribution(_desc_outputs(new_x)).mean())
        # a shifted lab (every descriptor moved by 3 between-group standard deviations)
        assert 1 - det.is_in_distribution(_desc_outputs(new_x + 3.0)).mean() >= 0.95
    assert abs(np.mean(flagged) - 0.05) <= 0.04
    assert np.mean(flagged_ungrouped) > 2 * np.mean(flagged)  # what a within-group quantile pays


def test_too_few_groups_fall_back_to_the_validation_quantile():
    rng = np.random.default_rng(4)
    x, g = _grouped_descriptors(rng, 3, 60)
    det = DETECTORS["image_stats"]().fit(_desc_outputs(x[::2], g[::2]),
                                          _desc_outputs(x[1::2], g[1::2]))
    assert det.is_in_distribution(_desc_outputs(x[1::2])).mean() == pytest.approx(0.95, abs=0.02)


def test_fast_leave_one_group_out_scores_match_refitting_each_group():
    """The sums-based leave-one-group-out scores agree with refitting the Gaussian without each
    group (they differ only by using the full data's shrinkage intensity)."""
    from smids_eval.evaluate.ood import _gaussian, _leave_one_group_out_scores, _neg_distance

    rng = np.random.default_rng(5)
    x, g = _grouped_descriptors(rng, 9, 60, dims=8)
    x[:, 0] = 10 * x[:, 0] + 3  # unequal scales and offsets
    refit = np.empty(len(x))
    for group in np.unique(g):
        refit[g == group] = _neg_distance(_gaussian(x[g != group]), x[g == group])
    fast = _leave_one_group_out_scores(x, g)
    assert np.corrcoef(fast, refit)[0, 1] > 0.999
    assert np.quantile(fast, 0.05) == pytest.approx(np.quantile(refit, 0.05), rel=0.02)


def test_an_acquisition_fit_is_made_once_per_content(monkeypatch):
    """Every arm of a fold fits the same acquisition detector on the same images: the second
    fit on equal content reuses the first (same threshold, no new leave-one-group-out pass);
    other groups, another keep, or another train/val division are fitted anew."""
    from smids_eval.evaluate import ood

    passes = []
    real = ood._leave_one_group_out_scores
    monkeypatch.setattr(ood, "_leave_one_group_out_scores",
                        lambda *a, **k: passes.append(1) or real(*a, **k))
    rng = np.random.default_rng(6)
    x, g = _grouped_descriptors(rng, 8, 30)
    train, val = _desc_outputs(x[:180], g[:180]), _desc_outputs(x[180:], g[180:])
    first = DETECTORS["image_stats"]().fit(train, val)
    again = DETECTORS["image_stats"]().fit(_desc_outputs(x[:180].copy(), g[:180].copy()),
                                            _desc_outputs(x[180:].copy(), g[180:].copy()))
    assert len(passes) == 1 and again.threshold_ == first.threshold_
    np.testing.assert_array_equal(again.score(val), first.score(val))
    regrouped = np.roll(g, 5)
    DETECTORS["image_stats"]().fit(_desc_outputs(x[:180], regrouped[:180]),
                                   _desc_outputs(x[180:], regrouped[180:]))
    DETECTORS["image_stats"](keep=0.99).fit(train, val)
    assert len(passes) == 3
    fewer = DETECTORS["image_stats"]().fit(_desc_outputs(x[:150], g[:150]),
                                           _desc_outputs(x[150:], g[150:]))
    assert len(passes) == 4 and fewer.threshold_ is not None
