"""The selected-pipeline estimate chooses by inner-CV score only and scores on the outer fold."""

import numpy as np
import pandas as pd

from smids_eval.report.selection import selected_pipeline, selected_summary


def _folds(rng, n_folds=5):
    rows = []
    for fold in range(n_folds):
        for variant, inner in (("A.0", 0.70), ("B.0", 0.80), ("C.0", np.nan)):
            rows.append({"variant": variant, "setting": "tuned" if variant != "C.0" else "specified",
                         "repeat": 0, "fold": fold,
                         "tune_best_inner_macro_f1": inner + rng.normal(0, 0.01),
                         "cls_macro_f1": rng.uniform(0.5, 0.9)})
    return pd.DataFrame(rows)


def test_each_fold_picks_by_inner_score_and_reports_its_outer_score():
    folds = _folds(np.random.default_rng(0))
    table = selected_pipeline(folds)
    assert len(table) == 5 and set(table["variant"]) == {"B.0"}  # best inner score
    b0 = folds[folds["variant"] == "B.0"].set_index("fold")["cls_macro_f1"]
    assert np.allclose(table.set_index("fold")["outer_score"], b0)
    summary = selected_summary(folds)
    assert summary["mean"] == np.mean(b0) and summary["choices"] == {"B.0 [tuned]": 5}


def test_outer_scores_never_drive_the_choice():
    folds = _folds(np.random.default_rng(1))
    folds.loc[folds["variant"] == "C.0", "cls_macro_f1"] = 1.0  # best outer, no inner score
    folds.loc[folds["variant"] == "A.0", "cls_macro_f1"] = 0.99
    assert "C.0" not in set(selected_pipeline(folds)["variant"])
    assert "A.0" not in set(selected_pipeline(folds)["variant"])


def test_without_inner_scores_there_is_no_estimate():
    folds = _folds(np.random.default_rng(2)).drop(columns="tune_best_inner_macro_f1")
    assert selected_pipeline(folds).empty and selected_summary(folds) == {}
