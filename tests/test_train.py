"""Training and prediction on a tiny VGG19 (width 1/16, 32 px) with an easy synthetic split."""

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_vgg import easy_images, tiny_profile, variant

from smids_eval.engine import Engine
from smids_eval.errors import TrainingDiverged
from smids_eval.train import HISTORY_COLUMNS, Hyper, class_weights, macro_f1

X, Y = easy_images(120, seed=0)
TR, VA, TE = np.arange(0, 60), np.arange(60, 90), np.arange(90, 120)
ADAM = Hyper("adam", 3e-2, 0.0)


def _engine(tmp_path=None, v=None, **train):
    return Engine(v or variant(), tiny_profile(**train), device="cpu", cache_dir=tmp_path,
                  progress=False)


def _accuracy(out, y):
    return float(np.mean(out.logits.argmax(1) == y))


@pytest.mark.parametrize("cached", [True, False])
def test_learns_easy_split(cached):
    engine = _engine(v=variant(augmentation=True), feature_cache=cached, epochs=40, patience=40)
    assert engine.cached is cached
    feats = engine.prefix_features(X)
    result = engine.fit(feats[TR], Y[TR], feats[VA], Y[VA], ADAM, seed=0)
    out = engine.predict(result.state_dict, feats[TE, 0], labels=Y[TE])
    assert _accuracy(out, Y[TE]) >= 0.7  # chance is 1/3
    assert result.best_val_macro_f1 >= 0.6


def test_history_early_stopping_and_best_state(tmp_path):
    engine = _engine(epochs=30, patience=2)
    feats = engine.prefix_features(X)
    seen = []
    result = engine.fit(feats[TR], Y[TR], feats[VA], Y[VA], Hyper("sgd", 1e-4), seed=0,
                        on_epoch=lambda e, f1: seen.append((e, f1)),
                        history_csv=tmp_path / "summary.csv")
    h = result.history
    assert list(h.columns) == list(HISTORY_COLUMNS)
    assert result.epochs_run == len(h) < 30  # stopped early (lr too small to improve)
    assert result.epochs_run <= result.best_epoch + 2
    assert seen == list(zip(h.epoch, h.val_macro_f1, strict=True))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "summary.csv"), h, check_dtype=False)
    # the returned state is the best epoch's, not the last one's
    out = engine.predict(result.state_dict, feats[VA, 0])
    assert macro_f1(Y[VA], out.logits.argmax(1), 3) == pytest.approx(result.best_val_macro_f1)


def test_callback_exception_propagates():
    engine = _engine()
    feats = engine.prefix_features(X)

    class Pruned(Exception):
        pass

    def prune(epoch, f1):
        raise Pruned(epoch)

    with pytest.raises(Pruned):
        engine.fit(feats[TR], Y[TR], feats[VA], Y[VA], ADAM, on_epoch=prune)


def test_frozen_unchanged_and_block5_trains():
    engine = _engine(v=variant(unfreeze_blocks=1), feature_cache=False, epochs=1)
    prefix_before = {k: v.clone() for k, v in engine.model.prefix.state_dict().items()}
    feats = engine.prefix_features(X)
    result = engine.fit(feats[TR], Y[TR], feats[VA], Y[VA], ADAM, seed=0)
    for k, v in engine.model.prefix.state_dict().items():
        assert torch.equal(v, prefix_before[k]), k
    initial = engine.fresh_suffix(0).state_dict()
    block5 = [k for k in initial if k.startswith("blocks.")]
    assert len(block5) == 8  # 4 convs of block 5
    assert all(not torch.equal(result.state_dict[k], initial[k].cpu()) for k in block5)


def test_grey_end_to_end():
    engine = _engine(v=variant(channels="grey", augmentation=True), epochs=20, patience=20)
    feats = engine.prefix_features(X)
    assert engine.model.conv_layers()[0].in_channels == 1
    result = engine.fit(feats[TR], Y[TR], feats[VA], Y[VA], ADAM, seed=0)
    out = engine.predict(result.state_dict, X[TE])  # raw uint8 images also accepted
    assert out.logits.shape == (30, 3) and _accuracy(out, Y[TE]) > 0.5
    grey = torch.rand(2, 1, 32, 32)
    assert engine.full_model(result.state_dict)(grey).shape == (2, 3)


def test_same_seed_same_weights():
    engine = _engine(v=variant(augmentation=True, dropout=True, unfreeze_blocks=1), epochs=2)
    feats = engine.prefix_features(X)
    a, b, c = (engine.fit(feats[TR], Y[TR], feats[VA], Y[VA], ADAM, seed=s).state_dict
               for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_divergence_raises():
    engine = _engine(epochs=3)
    feats = engine.prefix_features(X)
    with pytest.raises(TrainingDiverged, match="learning_rate=1e\\+30"):
        engine.fit(feats[TR], Y[TR], feats[VA], Y[VA], Hyper("sgd", 1e30))
    bad = feats.clone()
    bad[0] = float("nan")
    with pytest.raises(TrainingDiverged, match="NaN"):
        engine.fit(bad[TR], Y[TR], bad[VA], Y[VA], ADAM)


def test_mc_dropout_only_for_dropout_variants():
    for dropout in (False, True):
        engine = _engine(v=variant(dropout=dropout), epochs=2)
        feats = engine.prefix_features(X)
        result = engine.fit(feats[TR], Y[TR], feats[VA], Y[VA], ADAM)
        out = engine.predict(result.state_dict, feats[TE, 0], mc_samples=7, groups=np.arange(30))
        assert out.features.shape == (30, 16) and out.groups is not None
        if not dropout:
            assert out.mc_probs is None
            continue
        assert out.mc_probs.shape == (7, 30, 3)
        np.testing.assert_allclose(out.mc_probs.sum(-1), 1, atol=1e-5)
        assert np.abs(np.diff(out.mc_probs, axis=0)).max() > 1e-3  # passes differ
        again = engine.predict(result.state_dict, feats[TE, 0], mc_samples=7)
        np.testing.assert_array_equal(out.logits, again.logits)     # deterministic logits
        np.testing.assert_array_equal(out.mc_probs, again.mc_probs)  # seeded MC


def test_class_weights_balance():
    w = class_weights(np.array([0, 0, 0, 1]), 3).numpy()
    np.testing.assert_allclose(w, [4 / 9, 4 / 3, 0.0])
