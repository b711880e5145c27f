"""Repeated grouped CV and arms computed once: assignments, identical numbers, aliases, caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_vgg import easy_images, tiny_profile, variant

from smids_eval import Predictor, StudyConfig, run_study
from smids_eval.arms import ArmTable
from smids_eval.engine import Engine
from smids_eval.features import CacheBusy, FeatureCache
from smids_eval.splits import make_repeated_splits
from smids_eval.variants import select_variants

TINY = str(Path(__file__).parent / "profiles" / "tiny.toml")
SKIP = {"wall_seconds", "repeat", "fold"}


def numeric_equal(a: pd.DataFrame, b: pd.DataFrame, columns=None) -> list[str]:
    """Columns whose numbers differ between two row-aligned frames."""
    cols = columns or [c for c in a.select_dtypes("number") if c in b and c not in SKIP]
    return [c for c in cols if not np.allclose(a[c].to_numpy(float), b[c].to_numpy(float),
                                               rtol=1e-9, atol=1e-12, equal_nan=True)]


def test_identical_arms_follow_from_the_variants_table():
    table = ArmTable.build(select_variants(["all"]), ("specified", "tuned"), rf=True)
    canonical = table.canonical
    # F.0, F.2, F.3, F.4 share the architecture and the search space: one tuned computation
    assert {canonical[(v, "tuned")] for v in ("F.0", "F.2", "F.3", "F.4")} == {("F.0", "tuned")}
    # their specified optimisers / learning rates differ: four computations
    assert len({canonical[(v, "specified")] for v in ("F.0", "F.2", "F.3", "F.4")}) == 4
    # random-forest heads see channels and prefix depth only
    assert canonical[("E.0+RF", "tuned")] == canonical[("C.0+RF", "tuned")] == ("A.0+RF", "tuned")
    assert canonical[("F.0+RF", "tuned")] == ("B.0+RF", "tuned")
    assert canonical[("F.1+RF", "tuned")] == ("F.1+RF", "tuned")  # deeper frozen prefix
    assert table.aliases(("F.0", "tuned")) == ["F.2", "F.3", "F.4"]
    assert len(table.computed()) == 10 + 7 + 3  # specified, tuned, RF


def test_repeats_redraw_the_assignment_with_the_same_seed_base():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    groups = rng.integers(0, 17, 300)
    plans = make_repeated_splits(labels, groups, 5, 3, seed=4, repeats=3)
    again = make_repeated_splits(labels, groups, 5, 3, seed=4, repeats=3)
    for p, q in zip(plans, again, strict=True):
        assert np.array_equal(p.outer_fold, q.outer_fold)  # deterministic
    assert not np.array_equal(plans[0].outer_fold, plans[1].outer_fold)
    assert not np.array_equal(plans[1].outer_fold, plans[2].outer_fold)
    # repeat 0 is the seed's own single assignment
    assert np.array_equal(plans[0].outer_fold,
                          make_repeated_splits(labels, groups, 5, 3, seed=4)[0].outer_fold)


def test_repeats_redraw_groups_of_distinct_sizes_and_class_mixes():
    """Groups like the real copy's inferred ones (2 to 600 images, each its own class mix):
    StratifiedGroupKFold's shuffle gives the same folds under every seed there, so repeats after
    the first draw their own order; every repeat is another partition, still grouped, balanced
    and reproducible."""
    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.default_rng(3)
    sizes = np.unique(rng.integers(2, 600, 17))          # distinct sizes
    groups = np.repeat(np.arange(len(sizes)), sizes)
    labels = np.concatenate([rng.choice(3, n, p=rng.dirichlet([2, 2, 2])) for n in sizes])

    def sklearn_folds(seed):
        fold = np.empty(len(labels), dtype=int)
        splitter = StratifiedGroupKFold(5, shuffle=True, random_state=seed)
        for f, (_, test) in enumerate(splitter.split(labels, labels, groups)):
            fold[test] = f
        return fold

    assert np.array_equal(sklearn_folds(0), sklearn_folds(1000))   # the pitfall
    plans = make_repeated_splits(labels, groups, 5, 3, seed=0, repeats=3)
    again = make_repeated_splits(labels, groups, 5, 3, seed=0, repeats=3)
    for p, q in zip(plans, again, strict=True):
        assert np.array_equal(p.outer_fold, q.outer_fold)
    assert np.array_equal(plans[0].outer_fold, sklearn_folds(0))  # repeat 0 as before
    partitions = [frozenset(frozenset(np.unique(groups[p.outer_fold == f])) for f in range(5))
                  for p in plans]
    assert len(set(partitions)) == 3                                # three different partitions
    for p in plans:
        for f in range(5):
            train, test = p.outer(f)                                # leakage-checked
            assert len(test) > 0
            shares = np.bincount(labels[test], minlength=3) / len(test)
            assert np.all(np.abs(shares - np.bincount(labels, minlength=3) / len(labels)) < 0.25)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("arms-cache"))


def test_deduplicated_arms_equal_computing_them_separately(tmp_path, cache):
    both = run_study(StudyConfig(variants=("F.0", "F.2"), profile=TINY, settings=("tuned",),
                                 out=str(tmp_path / "both"), cache_dir=cache, progress=False))
    alone = run_study(StudyConfig(variants=("F.2",), profile=TINY, settings=("tuned",),
                                  out=str(tmp_path / "alone"), cache_dir=cache, progress=False))
    rows = both.folds
    assert set(rows["variant"]) == {"F.0", "F.0+RF"}  # F.2's arms were not recomputed
    assert set(rows["aliases"]) == {"F.2", "F.2+RF"}
    mine, theirs = (f.sort_values(["variant", "fold"]).reset_index(drop=True)
                    for f in (rows, alone.folds))
    neural = mine["variant"] == "F.0"
    assert not numeric_equal(mine[neural].reset_index(drop=True),
                             theirs[theirs["variant"] == "F.2"].reset_index(drop=True))
    decisions = ["cls_accuracy", "cls_macro_f1", "cls_recall_abnormal_sperm"]
    assert not numeric_equal(mine[~neural].reset_index(drop=True),
                             theirs[theirs["variant"] == "F.2+RF"].reset_index(drop=True),
                             decisions)
    board = both.leaderboard
    assert len(board) == 2 and set(board["aliases"]) == {"F.2", "F.2+RF"}
    # the alias name reaches the models that computed it
    predictor = Predictor(both.run.root, "F.2", fold=0)
    assert predictor.models[0].variant_name == "F.0"


@pytest.mark.parametrize("name", ["A.0", "F.1"])
def test_a_tuned_arm_takes_its_best_trials_fit_with_the_numbers_of_fitting_again(
        tmp_path, cache, monkeypatch, caplog, name):
    """A tuned arm's final fit is its best trial's inner-fold-0 fit (same data, settings, seed
    and threads): kept from tuning, it gives the numbers and history of training it again
    (``FIRST_FITS_KEPT = 0`` keeps none, so each final fit is trained)."""
    import logging

    import smids_eval.fold

    base = dict(variants=(name,), profile=TINY, settings=("tuned",), rf=False,
                cache_dir=cache, progress=False, seed=2)
    with caplog.at_level(logging.INFO, logger="smids_eval.study"):
        kept = run_study(StudyConfig(**base, out=str(tmp_path / "kept")))
    assert caplog.text.count("not trained again") == 2          # one per outer fold
    monkeypatch.setattr(smids_eval.fold, "FIRST_FITS_KEPT", 0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="smids_eval.study"):
        again = run_study(StudyConfig(**base, out=str(tmp_path / "again")))
    assert "not trained again" not in caplog.text
    assert len(kept.folds) == 2 and not numeric_equal(kept.folds, again.folds)
    assert (kept.folds["epochs_run"] >= 1).all()
    for fold in (0, 1):
        a, b = (pd.read_csv(r.run.history(name, 0, fold, "tuned")).drop(columns="seconds")
                for r in (kept, again))
        pd.testing.assert_frame_equal(a, b)


def test_repeated_cv_keeps_repeat_zero_and_adds_redrawn_folds(tmp_path, cache):
    base = dict(variants=("A.0",), profile=TINY, settings=("specified",), rf=False,
                cache_dir=cache, progress=False, seed=5)
    one = run_study(StudyConfig(**base, out=str(tmp_path / "one")))
    two = run_study(StudyConfig(**base, repeats=2, out=str(tmp_path / "two")))
    rows = two.folds
    assert sorted(zip(rows["repeat"], rows["fold"], strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    first = rows[rows["repeat"] == 0].reset_index(drop=True)
    assert not numeric_equal(first, one.folds.reset_index(drop=True))
    assert not np.allclose(rows.loc[rows["repeat"] == 1, "cls_accuracy"].to_numpy(),
                           first["cls_accuracy"].to_numpy())
    splits = pd.read_csv(two.run.splits, dtype={"group": str})
    assert set(splits["repeat"]) == {0, 1}
    for (repeat, fold), _ in rows.groupby(["repeat", "fold"]):
        part = splits[splits["repeat"] == repeat]
        test = set(part.loc[part["outer_fold"] == fold, "group"])
        assert not test & set(part.loc[part["outer_fold"] != fold, "group"])
    board = two.leaderboard
    assert board.loc[0, "n_folds"] == 4 and board.loc[0, "n_repeats"] == 2
    assert np.isfinite(board.loc[0, "cls_macro_f1_repeat_std"])
    # corrected interval: wider than the naive t-interval over the 4 fold scores
    naive = rows["cls_macro_f1"].std(ddof=1) / 2
    assert (board.loc[0, "cls_macro_f1_ci95_high"] - board.loc[0, "cls_macro_f1_mean"]) > naive


@pytest.mark.parametrize("change", [{"size": 64}, {"channels": "grey"}, {"views": 3}])
def test_feature_cache_never_reused_across_size_channels_or_views(tmp_path, change):
    """Caches are shared by content key: another image size, channel mode or view count is
    another key, so a wrong cache is never loaded."""
    images = easy_images(6)[0]
    ref = Engine(variant(augmentation=True), tiny_profile(views=2), device="cpu",
                 cache_dir=tmp_path, progress=False)
    ref.prefix_features(images)
    profile = tiny_profile(views=change.get("views", 2))
    if "size" in change:
        profile = profile.replace(data={"image_size": change["size"]})
        images = np.random.default_rng(0).integers(0, 256, (6, change["size"], change["size"], 3),
                                                   dtype=np.uint8)
    other = Engine(variant(augmentation=True, channels=change.get("channels", "rgb")), profile,
                   device="cpu", cache_dir=tmp_path, progress=False)
    feats = other.prefix_features(images)
    assert (other.cache.computed, other.cache.loaded) == (1, 0)
    assert feats.shape[1] == 1 + change.get("views", 2)
    same = Engine(variant(augmentation=True), tiny_profile(views=2), device="cpu",
                  cache_dir=tmp_path, progress=False)
    same.prefix_features(easy_images(6)[0])
    assert (same.cache.computed, same.cache.loaded) == (0, 1)  # the same key is shared


def test_a_profile_that_does_not_tune_unfrozen_variants_gives_them_no_tuned_arm(tmp_path, cache):
    """``trials_unfrozen = 0``: F.1 runs its specified setting (and its RF head) only, the plan
    counts exactly the rows the run writes, and the tables are made without the missing arm;
    ``--trials`` still asks for a tuned F.1."""
    untuned = ArmTable.build(select_variants(["all"]), ("specified", "tuned"), rf=True,
                             tuned=lambda v: not v.unfreeze_blocks)
    assert ("F.1", "tuned") not in untuned.canonical
    assert ("F.1", "specified") in untuned.canonical and ("F.1+RF", "tuned") in untuned.canonical
    assert len(untuned.computed()) == 10 + 6 + 3

    config = StudyConfig(variants=("F.1", "A.0"), profile=TINY, out=str(tmp_path / "out"),
                         overrides={"tune": {"trials_unfrozen": 0}}, cache_dir=cache,
                         progress=False)
    plan = run_study(config.replace(plan_only=True))
    by_name = {v.name: v for v in plan.variants}
    assert by_name["F.1"].tunings == 0 and by_name["A.0"].tunings == 2
    result = run_study(config)
    rows = result.folds
    assert len(rows) == plan.results_total == 2 * (2 + 2 + 1)   # folds × (A.0: 2 + RF, F.1: 1 + RF)
    f1 = rows[rows["variant"] == "F.1"]
    assert list(f1["setting"]) == ["specified", "specified"]
    assert set(rows.loc[rows["variant"] == "A.0", "setting"]) == {"specified", "tuned"}
    assert result.run.comparisons.is_file() and result.run.leaderboard.is_file()
    again = run_study(config.replace(out=str(tmp_path / "asked"), trials=1, plan_only=True))
    assert {v.name: v.tunings for v in again.variants}["F.1"] == 2


def test_every_fold_of_every_repeat_shifts_its_own_share_of_one_panel():
    from smids_eval.evaluate.shift_panel import ShiftPanel

    rng = np.random.default_rng(1)
    labels, groups = rng.integers(0, 3, 400), rng.integers(0, 17, 400)
    panel = ShiftPanel.draw(400, per_fold=20, outer_folds=5, severities=(3,), seed=7)
    assert len(panel) == 100 and len(np.unique(panel.index)) == 100
    assert np.array_equal(panel.index, ShiftPanel.draw(400, 20, 5, (3,), seed=7).index)
    for plan in make_repeated_splits(labels, groups, 5, 2, seed=0, repeats=3):
        held_out = [panel.index[panel.positions(plan.outer(f)[1])] for f in range(5)]
        assert sorted(np.concatenate(held_out)) == sorted(panel.index)   # each image once
        for f, idx in enumerate(held_out):
            assert set(idx) <= set(plan.outer(f)[1])                     # and held out there
    assert len(ShiftPanel.draw(400, 20, 5, (), seed=7)) == 0             # nothing to shift
    assert len(ShiftPanel.draw(60, 20, 5, (3,), seed=7)) == 60           # all, when fewer


def test_repeats_reuse_the_shifted_copies_activations_and_descriptors(tmp_path):
    """A second repeat re-draws the folds but evaluates the same shifted copies: nothing new is
    written to the feature or descriptor caches, and a second process (or a twin) loads what the
    first computed."""
    cache = tmp_path / "cache"
    base = dict(variants=("A.0",), profile=TINY, settings=("specified",), rf=False,
                cache_dir=str(cache), progress=False, seed=5)

    def entries():
        return sorted(p.name for d in ("features", "descriptors")
                      for p in (cache / d).glob("*.pt"))

    one = run_study(StudyConfig(**base, out=str(tmp_path / "one")))
    built = entries()
    assert any(n.startswith("descriptors-") for n in built)
    two = run_study(StudyConfig(**base, repeats=2, out=str(tmp_path / "two")))
    assert entries() == built
    first = two.folds[two.folds["repeat"] == 0].reset_index(drop=True)
    assert not numeric_equal(first, one.folds.reset_index(drop=True))   # loaded = computed
    shifted = [c for c in two.folds if c.startswith("shift_") and c.endswith("_accuracy")]
    assert shifted and two.folds[shifted].notna().all().all()


def test_a_set_another_worker_is_making_does_not_move_the_tables_columns(tmp_path, monkeypatch):
    """A worker that finds a shifted set busy (another worker making it) makes it in a second
    pass; the run's columns still come in the panel's order, so one seed gives one table."""
    base = dict(variants=("A.0",), profile=TINY, settings=("specified",), rf=False,
                progress=False, seed=5, jobs=1)
    plain = run_study(StudyConfig(**base, cache_dir=str(tmp_path / "c1"),
                                  out=str(tmp_path / "plain")))
    deferred, real_get = [], FeatureCache.get

    def first_set_busy_once(self, key, compute, wait=True):
        if not wait and not deferred:          # the panel's first set, first pass
            deferred.append(key)
            raise CacheBusy(str(key))
        return real_get(self, key, compute, wait)

    monkeypatch.setattr(FeatureCache, "get", first_set_busy_once)
    busy = run_study(StudyConfig(**base, cache_dir=str(tmp_path / "c2"),
                                 out=str(tmp_path / "busy")))
    assert deferred                                             # a set was left for later
    assert list(busy.folds.columns) == list(plain.folds.columns)
    assert not numeric_equal(busy.folds, plain.folds)
