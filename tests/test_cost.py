"""What a run records about its own cost: the stage timer, timings.json fields, the bf16 peak,
the tuning budget the plan shares with the study (timer tests use a fake clock)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from smids_eval.config import TuneConfig, load_profile
from smids_eval.device import measure_bf16_peak
from smids_eval.probe import measure_rates
from smids_eval.run_folder import RunFolder
from smids_eval.timing import REFERENCE_GFLOPS, TARGET_S, RunCost, StageTimer, peak_rss_mb
from smids_eval.tune import trial_budget


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def test_stage_times_add_up_and_nested_stages_are_exclusive():
    clock = FakeClock()
    timer = StageTimer(clock)
    clock.tick(1.0)                      # outside any stage: wall only
    with timer.stage("features"):
        clock.tick(2.0)
    with timer.stage("tuning"):
        clock.tick(3.0)
        with timer.stage("final_fits"):  # nested: not charged to tuning as well
            clock.tick(4.0)
        clock.tick(0.5)
    with timer.stage("features"):        # a stage entered again accumulates
        clock.tick(1.25)
    assert timer.as_dict() == {"features": 3.25, "tuning": 3.5, "final_fits": 4.0}
    assert list(timer.as_dict()) == ["features", "tuning", "final_fits"]
    assert timer.wall() == pytest.approx(11.75)
    assert sum(timer.as_dict().values()) <= timer.wall()


def test_a_stage_that_raises_is_still_charged():
    clock = FakeClock()
    timer = StageTimer(clock)
    with pytest.raises(RuntimeError), timer.stage("evaluation"):
        clock.tick(2.0)
        raise RuntimeError("boom")
    assert timer.as_dict() == {"evaluation": 2.0}


def test_rounding_never_makes_stages_exceed_the_wall():
    clock = FakeClock()
    timer = StageTimer(clock)
    for name in "abcdefgh":
        with timer.stage(name):
            clock.tick(0.0015)           # rounds to 0.002 to nearest: 8 × 0.002 > 0.012
    record = RunCost(timer).record()
    assert sum(record["stages_s"].values()) <= record["wall_s"]


def test_cost_record_has_every_field_and_the_normalised_cost(tmp_path):
    clock = FakeClock()
    timer = StageTimer(clock)
    with timer.stage("tuning"):
        clock.tick(10.0)
    cost = RunCost(timer, peak_gflops=350.0, device="cpu", plan={"eta_s": 12.5, "results_total": 4})
    record = cost.record()
    for key in ["wall_s", "stages_s", "peak_rss_mb", "peak_rss_children_mb", "device",
                "bf16_peak_gflops", "normalised_wall_s", "normalised_reference_gflops",
                "normalised_target_s", "eta_s", "plan"]:
        assert key in record, key
    assert record["wall_s"] == pytest.approx(10.0)
    assert record["normalised_wall_s"] == pytest.approx(10.0 * 350.0 / REFERENCE_GFLOPS, abs=0.1)
    assert record["normalised_target_s"] == TARGET_S and record["eta_s"] == 12.5
    run = RunFolder(tmp_path / "run")
    run.write_timings(record)
    assert json.loads(run.timings.read_text()) == run.read_timings() == record
    assert RunCost().record()["normalised_wall_s"] is None  # no peak measured: no normalised cost
    fast = RunCost(timer, peak_gflops=2400.0).record()      # a faster host owes plain wall time
    assert fast["normalised_wall_s"] == pytest.approx(10.0, abs=0.01)


def test_peak_rss_is_in_megabytes():
    rss = peak_rss_mb()
    if rss["self"] is not None:
        assert 10 < rss["self"] < 1_000_000   # this Python with torch loaded: tens of MB or more


TINY = Path(__file__).parent / "profiles" / "tiny.toml"


def test_bf16_peak_is_measured_quickly_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    t0 = time.perf_counter()
    peak = measure_bf16_peak("cpu", budget_s=0.5)
    assert peak > 0
    assert time.perf_counter() - t0 < 5
    assert torch.equal(torch.get_rng_state(), state)


def test_probe_measures_every_depth_within_its_budget_and_leaves_the_global_rng_alone():
    profile = load_profile(str(TINY)).replace(device="cpu")
    state = torch.get_rng_state()
    t0 = time.perf_counter()
    rates = measure_rates(profile, [4, 5, 5])
    assert time.perf_counter() - t0 < 10
    assert sorted(rates) == [4, 5]
    assert all(r.prefix_s > 0 and r.train_s > 0 for r in rates.values())
    assert torch.equal(torch.get_rng_state(), state)  # a probe never changes a run's numbers


@pytest.mark.parametrize("unfrozen,trials,expected", [
    (False, None, (5, 3)), (True, None, (1, 1)), (True, 7, (7, 1)), (False, 7, (7, 3))])
def test_trial_budget_is_the_one_rule_for_study_and_plan(unfrozen, trials, expected):
    cfg = TuneConfig(trials=5, trials_unfrozen=1, unfrozen_inner_folds=1)
    assert trial_budget(cfg, trials, unfrozen, n_inner=3) == expected
    assert trial_budget(TuneConfig(trials_unfrozen=2, unfrozen_inner_folds=0), None, True, 3) == (2, 3)


def test_evaluation_probe_times_an_arms_metrics_and_a_forest_and_leaves_rngs_and_memo_alone():
    """The plan's evaluation rates come from the real metrics code on random outputs of the
    run's sizes; like every probe it changes no run's numbers."""
    import numpy as np

    from smids_eval.probe import EvalSizes, measure_evaluation

    profile = load_profile(str(TINY)).replace(device="cpu")
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    worst = max(profile.evaluate.ood_severities)
    sizes = EvalSizes(train=80, val=40, test=40, far={"noise": 10},
                      shifted={f"gaussian_blur_s{worst}": 12, "gaussian_blur_s1": 12})
    from smids_eval.evaluate.ood import DescriptorDistance

    memo = DescriptorDistance._fitted
    memo_before = list(memo)
    rates = measure_evaluation(profile, sizes)
    assert rates.arm_s > 0 and rates.forest_s > 0
    # the probe's random fits are not left in the run's acquisition-detector memo
    assert DescriptorDistance._fitted is memo and list(memo) == memo_before
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
