"""A fresh run compared with the committed run of the same name: per-column deltas, the
tolerance verdict and ``reproduction.json``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from smids_eval.reproduction import (
    EXACT,
    REPORT,
    check_reproduction,
    column_deltas,
    committed_twin,
    summary_line,
)
from smids_eval.run_folder import RunFolder, folds_table


def _folds(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"variant": v, "setting": "tuned", "repeat": 0, "fold": f,
             "cls_macro_f1": rng.uniform(0.5, 0.9), "cal_ece": rng.uniform(0, 0.1),
             "ood_textures_knn_fpr95": rng.uniform(0, 1), "run_device": "cpu/bf16",
             "run_commit": "abc", "hp_learning_rate": 1e-4}
            for v in ("A.0", "B.0") for f in range(3)]
    return pd.DataFrame(rows)


def _run(root, folds):
    root.mkdir(parents=True)
    folds.to_csv(RunFolder(root).folds_csv, index=False)
    return root


def test_identical_runs_reproduce_and_the_record_is_written(tmp_path):
    fresh = _run(tmp_path / "runs" / "quick-x-k3-seed0", _folds())
    _run(tmp_path / "results" / "quick-x-k3-seed0", _folds().sample(frac=1, random_state=1))
    record = check_reproduction(fresh, tmp_path / "results")
    assert record["within_tolerance"] and record["rows_compared"] == 6
    assert record["max_abs_delta"] == {"cls": 0.0, "cal": 0.0, "ood": 0.0}
    assert json.loads((fresh / REPORT).read_text()) == record
    assert "reproduces it within tolerance" in summary_line(record)


def test_a_changed_decision_metric_is_caught_and_ood_jitter_tolerated(tmp_path):
    committed = _folds()
    fresh = committed.copy()
    fresh.loc[2, "cls_macro_f1"] += 10 * EXACT
    fresh.loc[3, "ood_textures_knn_fpr95"] += 0.05
    deltas = column_deltas(fresh, committed).set_index("column")["max_abs_delta"]
    assert np.isclose(deltas["cls_macro_f1"], 10 * EXACT) and np.isclose(
        deltas["ood_textures_knn_fpr95"], 0.05)
    assert "hp_learning_rate" not in deltas  # hyperparameters are not metrics
    a = _run(tmp_path / "runs" / "r", fresh)
    _run(tmp_path / "results" / "r", committed)
    record = check_reproduction(a, tmp_path / "results")
    assert record["columns_over_tolerance"] == ["cls_macro_f1"] and not record["within_tolerance"]


def test_missing_rows_values_and_twins(tmp_path):
    committed = _folds()
    fresh = committed.iloc[1:].copy()
    fresh.loc[1, "cal_ece"] = np.nan  # computed on one side only: a difference
    deltas = column_deltas(fresh, committed).set_index("column")["max_abs_delta"]
    assert deltas["cal_ece"] == 1.0
    # no committed run of that name, or the run is the committed folder itself: nothing to do
    run = _run(tmp_path / "results" / "only", committed)
    assert committed_twin(run, tmp_path / "results") is None
    assert committed_twin(tmp_path / "runs" / "absent", tmp_path / "results") is None


def test_a_legacy_folds_csv_is_still_found_and_compared(tmp_path):
    legacy = tmp_path / "results" / "old"
    legacy.mkdir(parents=True)
    assert folds_table(legacy) == RunFolder(legacy).folds_csv == legacy / "folds.csv.gz"
    _folds().to_csv(legacy / "folds.csv", index=False)  # written before the table was gzipped
    assert folds_table(legacy) == legacy / "folds.csv"
    fresh = _run(tmp_path / "runs" / "old", _folds())
    assert folds_table(fresh) == fresh / "folds.csv.gz"
    assert committed_twin(fresh, tmp_path / "results") == legacy
    record = check_reproduction(fresh, tmp_path / "results")
    assert record["within_tolerance"] and record["rows_compared"] == 6
    # a rewritten table replaces the legacy one
    RunFolder(legacy).write_folds_csv()
    assert folds_table(legacy) == legacy / "folds.csv.gz" and not (legacy / "folds.csv").exists()


def test_runs_on_other_hardware_are_compared_but_not_judged(tmp_path):
    committed = _folds().assign(run_hardware="cpu:amx")
    fresh = _folds().assign(run_hardware="cpu:avx512_bf16")
    fresh.loc[0, "cls_macro_f1"] += 0.2          # bf16 rounding of another kernel family
    a = _run(tmp_path / "runs" / "r", fresh)
    _run(tmp_path / "results" / "r", committed)
    record = check_reproduction(a, tmp_path / "results")
    assert not record["within_tolerance"] and not record["judged"]
    assert record["hardware"] == ["cpu:avx512_bf16", "cpu:amx"]
    assert "hardware differs: cpu:avx512_bf16 vs cpu:amx; not judged" in summary_line(record)
    # same hardware, or a committed run from before run_hardware existed: judged
    _run(tmp_path / "results2" / "r", committed.drop(columns="run_hardware"))
    assert check_reproduction(a, tmp_path / "results2")["judged"]
