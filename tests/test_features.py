"""Augmentation views and the frozen-feature cache (tiny VGG19, 32 px)."""

import numpy as np
import pytest
import torch
from filelock import FileLock
from tiny_vgg import easy_images, tiny_profile, variant

from smids_eval.augment import augment, draw_params, images_to_tensor, to_float
from smids_eval.device import resolve_runtime
from smids_eval.engine import Engine
from smids_eval.evaluate.descriptors import DescriptorCache, block_moments, image_statistics
from smids_eval.features import CacheBusy, LazyImages
from smids_eval.train import CachedSource


def test_views_reproducible_per_image():
    assert torch.equal(draw_params(10, seed=3, view=2)[:4], draw_params(4, seed=3, view=2))
    assert not torch.equal(draw_params(4, seed=3, view=2), draw_params(4, seed=3, view=1))
    x = to_float(images_to_tensor(easy_images(6)[0]))
    p = draw_params(6, 0, 1)
    whole = augment(x, p)
    torch.testing.assert_close(augment(x[2:4], p[2:4]), whole[2:4])  # batch-independent
    assert whole.shape == x.shape and 0 <= whole.min() and whole.max() <= 1
    assert (whole - x).abs().mean() > 0.01  # it does change the images


def test_flip_and_rotation_are_exact():
    x = torch.rand(1, 3, 8, 8)
    p = torch.full((1, 11), 0.5)  # 0.5 = no small affine, neutral colour
    p[:, [0, 1]] = 0.9            # no flips
    p[:, 2] = 0.6                 # k = floor(0.6 * 4) = 2 → 180°
    torch.testing.assert_close(augment(x, p), torch.rot90(x, 2, (2, 3)), atol=1e-5, rtol=0)
    p[:, 0] = 0.1                 # + horizontal flip
    torch.testing.assert_close(augment(x, p), torch.rot90(x, 2, (2, 3)).flip(3), atol=1e-5, rtol=0)


def test_cache_second_call_loads(tmp_path):
    x, _ = easy_images(12)
    profile = tiny_profile(views=2)
    v = variant(augmentation=True)
    first = Engine(v, profile, device="cpu", cache_dir=tmp_path, progress=False)
    feats = first.prefix_features(x)
    assert feats.dtype == torch.bfloat16 and feats.shape[:2] == (12, 3)
    assert (first.cache.computed, first.cache.loaded) == (1, 0)
    assert not torch.equal(feats[:, 0], feats[:, 1])  # view 1 is augmented
    second = Engine(v, profile, device="cpu", cache_dir=tmp_path, progress=False)
    again = second.prefix_features(x)
    assert (second.cache.computed, second.cache.loaded) == (0, 1)
    assert torch.equal(feats, again)
    # other images or no augmentation → other key, recomputed
    second.prefix_features(x[::-1].copy())
    no_aug = second.prefix_features(x, augment=False)
    assert second.cache.computed == 2 and no_aug.shape[1] == 1
    torch.testing.assert_close(no_aug[:, 0], feats[:, 0], atol=0, rtol=0)


def test_one_random_view_per_image_per_epoch():
    feats = torch.arange(6 * 3, dtype=torch.float32).view(6, 3, 1, 1, 1)
    src = CachedSource(feats, resolve_runtime("cpu", "fp32"))
    g = torch.Generator().manual_seed(0)
    picked = []
    for _ in range(4):
        src.start_epoch(g)
        batch = src.train_batch(torch.arange(6)).view(-1)
        assert torch.equal(batch, feats[torch.arange(6), src.views].view(-1))
        picked.append(src.views.clone())
    assert len({tuple(p.tolist()) for p in picked}) > 1
    assert torch.equal(src.eval_batch(torch.arange(6)).view(-1), feats[:, 0].view(-1))


def test_cached_logits_match_whole_network(tmp_path):
    x, y = easy_images(24)
    for k in (0, 1):
        engine = Engine(variant(unfreeze_blocks=k, dropout=True), tiny_profile(precision="bf16"),
                        device="cpu", cache_dir=tmp_path, progress=False)
        feats = engine.prefix_features(x)
        result = engine.fit(feats[:18], y[:18], feats[18:], y[18:], epochs=2)
        cached = engine.predict(result.state_dict, feats[:, 0], mc_samples=0)
        model = engine.full_model(result.state_dict).float()
        with torch.no_grad():
            exact = model(to_float(images_to_tensor(x))).numpy()
        scale = np.abs(exact).max()
        assert np.abs(cached.logits - exact).max() <= 0.03 * scale + 1e-3


def test_lazy_images_are_made_only_on_a_miss_and_a_busy_entry_is_left_for_later(tmp_path):
    """Shifted copies are made only when their activations are not on disk, and a worker that
    finds another process computing an entry (its lock held) moves on instead of waiting."""
    x, _ = easy_images(6)
    made = []

    def make():
        made.append(1)
        return x

    engine = Engine(variant(), tiny_profile(), device="cpu", cache_dir=tmp_path, progress=False)
    lazy = LazyImages("copies-1", make)
    key = engine.cache_key(lazy.key, augment=False)
    with FileLock(str(engine.cache.path(key)) + ".lock"):   # another worker is computing it
        with pytest.raises(CacheBusy):
            engine.prefix_features(lazy, augment=False, wait=False)
    assert made == [] and engine.cache.computed == 0
    first = engine.prefix_features(lazy, augment=False, wait=False)
    assert made == [1]
    again = engine.prefix_features(LazyImages("copies-1", make), augment=False)
    assert made == [1] and engine.cache.loaded == 1          # loaded, copies not made again
    assert torch.equal(first, again)
    torch.testing.assert_close(first, engine.prefix_features(x, augment=False), atol=0, rtol=0)


def test_descriptors_are_cached_by_content_and_block_moments_by_prefix_identity(tmp_path):
    """Image statistics depend on the pixels only; block moments also on the prefix's channels
    and weights, not on how deep the frozen prefix goes (F.0 and F.1 share them)."""
    x, _ = easy_images(6)
    cache = DescriptorCache(tmp_path)
    frozen = Engine(variant(), tiny_profile(), device="cpu", progress=False)
    deeper = Engine(variant("F.1", unfreeze_blocks=1), tiny_profile(), device="cpu",
                    progress=False)
    grey = Engine(variant("A.0", channels="grey"), tiny_profile(), device="cpu", progress=False)

    def moments(engine, images):
        return cache.get("block_moments", images, engine.model.prefix, engine.prefix_identity)

    stats = cache.get("image_stats", LazyImages.of(x))
    np.testing.assert_array_equal(stats, image_statistics(x))
    m = moments(frozen, LazyImages.of(x))
    np.testing.assert_allclose(m, block_moments(frozen.model.prefix, x, "rgb"))
    assert cache.store.computed == 2
    never = LazyImages(LazyImages.of(x).key, lambda: pytest.fail("made although stored"))
    np.testing.assert_array_equal(moments(deeper, never), m)    # same first blocks: loaded
    np.testing.assert_array_equal(cache.get("image_stats", never), stats)
    assert cache.store.computed == 2
    assert not np.allclose(moments(grey, LazyImages.of(x)), m)  # other channels: computed
    assert cache.store.computed == 3
    with pytest.raises(ValueError, match="unknown descriptor"):
        cache.get("colour", LazyImages.of(x))
    with pytest.raises(ValueError, match="prefix's identity"):   # no key without what computes it
        cache.get("block_moments", LazyImages.of(x), frozen.model.prefix)
