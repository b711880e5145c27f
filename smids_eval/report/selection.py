"""The selected-pipeline estimate: what "pick the best arm, then use it" scores on new data.

Ranking arms by their outer-test means and reporting the winner's mean re-uses the test folds
for the choice (winner's curse: with 20 arms the top mean is biased upwards). Here each outer
fold chooses its arm by the inner-CV score alone (``tune_best_inner_macro_f1``: Optuna's best
trial for tuned arms, the grid search's best for random-forest heads) and contributes that
arm's outer score, so the choice never sees the fold it is scored on (Cawley & Talbot 2010,
nested selection). Arms without an inner-CV score (``specified``) cannot be chosen this way."""

from __future__ import annotations

import pandas as pd

INNER = "tune_best_inner_macro_f1"


def selected_pipeline(folds: pd.DataFrame, metric: str = "cls_macro_f1") -> pd.DataFrame:
    """One row per (repeat, fold): the arm with the best inner-CV score (ties: first by
    variant, setting), its inner score and its outer ``metric``; empty without inner scores."""
    if INNER not in folds or metric not in folds:
        return pd.DataFrame()
    rows = folds.dropna(subset=[INNER, metric])
    if "repeat" not in rows:
        rows = rows.assign(repeat=0)
    rows = rows.sort_values(["repeat", "fold", INNER, "variant", "setting"],
                            ascending=[True, True, False, True, True], kind="stable")
    chosen = rows.groupby(["repeat", "fold"], sort=True).head(1)
    return (chosen[["repeat", "fold", "variant", "setting", INNER, metric]]
            .rename(columns={INNER: "inner_score", metric: "outer_score"})
            .reset_index(drop=True))


def selected_text(summary: dict[str, object]) -> str:
    """One sentence: the estimate and which arms the folds chose."""
    chosen = ", ".join(f"{arm} ×{n}" for arm, n in summary["choices"].items())
    return (f"macro-F1 {summary['mean']:.3f} ± {summary['std']:.3f} over {summary['folds']} "
            f"outer folds, each choosing its arm by inner-CV score alone (chosen: {chosen})")


def selected_summary(folds: pd.DataFrame, metric: str = "cls_macro_f1") -> dict[str, object]:
    """Mean and std over folds of the selected pipeline's outer score, and how often each arm
    was chosen (``{}`` without inner scores)."""
    table = selected_pipeline(folds, metric)
    if table.empty:
        return {}
    scores = table["outer_score"].to_numpy(float)
    picks = table.groupby(["variant", "setting"]).size().sort_values(ascending=False)
    return {"mean": float(scores.mean()),
            "std": float(scores.std(ddof=1)) if len(scores) > 1 else float("nan"),
            "folds": len(scores), "choices": {f"{v} [{s}]": int(n) for (v, s), n in picks.items()}}
