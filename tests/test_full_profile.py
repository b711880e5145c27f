"""The full profile's code path (224 px, its evaluation layer and tuning settings) end to end on
the CPU, made tiny through overrides only: what a GPU run of ``--profile full`` executes,
checked without a GPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smids_eval import StudyConfig, run_study

#: sizes only: the full profile's image size, precision, pruner, OOD severities and RF grid stay
TINY_FULL = {
    "data": {"synthetic_images": 85},            # 17 donors × 5: enough for 2 × 2 grouped folds
    "model": {"width": 0.0625, "head_hidden": 16},
    "train": {"epochs": 1, "views": 1, "batch_size": 16},
    "tune": {"trials": 1, "trials_unfrozen": 1},
    "cv": {"outer_folds": 2, "inner_folds": 2, "repeats": 2},  # repeated CV as in full
    "evaluate": {"mc_samples": 2, "ood_max_images": 6, "far_ood_images": 4, "rf_trees": 10,
                 "gradcam_images": 1},
}


@pytest.mark.slow
def test_full_profile_runs_end_to_end_on_cpu_at_224_px(tmp_path):
    config = StudyConfig(variants=("F.1", "A.0"), profile="full", overrides=TINY_FULL,
                         settings=("tuned",), weights="random", device="cpu",
                         out=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"),
                         progress=False)
    result = run_study(config)
    assert result.context.profile.data.image_size == 224
    assert result.context.dataset.images.shape[1:3] == (224, 224)
    folds = pd.read_csv(result.run.folds_csv)
    assert set(folds["variant"]) == {"F.1", "A.0", "F.1+RF", "A.0+RF"}
    assert len(folds) == 2 * 2 * 4 and set(folds["setting"]) == {"tuned"}  # repeats × folds × arms
    assert set(folds["repeat"]) == {0, 1}
    assert (folds["run_profile"] == "full").all() and (folds["run_weights"] == "random").all()
    assert np.isfinite(folds["cls_accuracy"].to_numpy(float)).all()
    neural = folds[~folds["variant"].str.endswith("+RF")]
    assert (neural["tune_trials"] == 1).all() and (neural["epochs_run"] == 1).all()
    timings = result.run.read_timings()
    assert timings["plan"]["image_size"] == 224 and timings["plan"]["results_total"] == 16
    assert sum(timings["stages_s"].values()) <= timings["wall_s"]
