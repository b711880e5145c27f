"""Paired comparisons of variants across the same outer folds (of every repeat).

Nadeau & Bengio's corrected resampled t-test (the fold differences are not independent: the
training parts overlap), Wilcoxon signed-rank as a rank-based check, Cohen's d_z as effect size,
and Holm-adjusted p-values over all pairs of one metric.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

from .leaderboard import held_out_ratio

COMPARED = ("cls_macro_f1", "cls_recall_abnormal_sperm", "cls_accuracy")


def corrected_t_test(diff: np.ndarray, held_out_ratio: float) -> tuple[float, float]:
    """Nadeau–Bengio corrected resampled t statistic and two-sided p over k fold differences."""
    k = len(diff)
    var = diff.var(ddof=1)
    if k < 2 or var == 0:
        return float("nan"), float("nan")
    t = diff.mean() / np.sqrt((1 / k + held_out_ratio) * var)
    return float(t), float(2 * stats.t.sf(abs(t), k - 1))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs kept)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out


def compare(folds: pd.DataFrame, metrics=COMPARED) -> pd.DataFrame:
    """All pairs of (variant, setting) rows that share their folds, for each metric."""
    folds = folds.copy()
    folds["arm"] = folds["variant"] + " [" + folds["setting"] + "]"
    if "repeat" not in folds:
        folds["repeat"] = 0
    ratio = held_out_ratio(folds) or 0.25
    rows = []
    for metric in [m for m in metrics if m in folds]:
        table = folds.pivot_table(index=["repeat", "fold"], columns="arm", values=metric,
                                  aggfunc="first")
        for a, b in itertools.combinations(table.columns, 2):
            pair = table[[a, b]].dropna()
            if len(pair) < 2:
                continue
            diff = (pair[a] - pair[b]).to_numpy()
            t, p = corrected_t_test(diff, ratio)
            try:
                w_p = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
            except ValueError:
                w_p = float("nan")
            sd = diff.std(ddof=1)
            rows.append({"metric": metric, "a": a, "b": b, "n_folds": len(diff),
                         "mean_a": pair[a].mean(), "mean_b": pair[b].mean(),
                         "mean_diff": diff.mean(), "cohens_dz": diff.mean() / sd if sd > 0 else np.nan,
                         "a_wins": int((diff > 0).sum()), "t_corrected": t, "p_corrected_t": p,
                         "p_wilcoxon": w_p})
    result = pd.DataFrame(rows)
    if result.empty:
        return result
    result["p_holm"] = np.nan
    for _, part in result.groupby("metric"):
        result.loc[part.index, "p_holm"] = holm(part["p_corrected_t"].to_numpy())
    return result.sort_values(["metric", "p_corrected_t"]).reset_index(drop=True)
