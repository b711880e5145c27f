"""Per-fold rows → one leaderboard row per (variant, setting): mean, std, 95% interval over the
repeats × folds, and the spread between repeats.

The folds of repeated CV share training data, so a plain t-interval over R×K fold scores is far
too narrow; the interval uses Nadeau & Bengio's corrected variance, (1/n + n_test/n_fit)·s²,
with the true ratio of held-out to fitted images (the models are fitted on the inner-training
part of each outer training set).

``tied_with_best`` (True/False, empty when unknown): the arm with the best mean macro-F1 and every
arm that the Bayesian correlated t-test does not show to be worse than it by more than the ROPE
(0.01) with probability ≥ 0.95, paired on (repeat, fold); ``p_worse_than_best`` is that
probability (``smids_eval.report.comparisons.tied_with_best``)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy import stats

from .comparisons import held_out_ratio, tied_with_best

#: identifies one leaderboard row
KEYS = ["variant", "setting"]
#: provenance columns copied into every leaderboard row (identical across a run's folds)
PROVENANCE = ["run", "run_commit", "run_profile", "run_device", "run_precision", "run_weights",
              "run_grouping", "run_split", "run_data_source", "run_data_fingerprint", "run_seed"]
#: the headline metrics, the study's key figure (recall on abnormal cells) first
HEADLINE = ["cls_recall_abnormal_sperm", "cls_macro_f1", "cls_accuracy", "cls_balanced_accuracy",
            "cls_recall_normal_sperm", "cls_recall_non_sperm",
            # selective: coverage of the validation-fitted (risk-controlling) threshold and the
            # risk it realises on the held-out fold; the test-chosen figure is sel_oracle_*
            "sel_val_thr_coverage_msp", "sel_val_thr_risk_msp",
            # false alarms of the in-distribution rule on new acquisition groups
            "ood_heldout_in_distribution_flagged"]
#: prefixes of evaluation-layer columns that get mean/std/CI too
METRIC_PREFIXES = ("cls_", "cal_", "mc_", "sel_", "cp_", "ood_", "shift_", "batch_")


def _on_leaderboard(col: str) -> bool:
    """folds.csv keeps everything; the leaderboard keeps AUROC (and the in-distribution rule's
    flagged share) for OOD and accuracy for shifts."""
    if col.startswith("cls_cm_") or col.startswith("sel_val_thr_accepted_"):
        return False
    if col.startswith("ood_"):
        return col.endswith(("_auroc", "_in_distribution_flagged"))
    if col.startswith("shift_"):
        return col.endswith("_accuracy")
    return True


def metric_columns(folds: pd.DataFrame) -> list[str]:
    cols = [c for c in folds.columns if c.startswith(METRIC_PREFIXES) and _on_leaderboard(c)
            and pd.api.types.is_numeric_dtype(folds[c])]
    head = [c for c in HEADLINE if c in cols]
    return head + sorted(c for c in cols if c not in head)


def t_interval(values: np.ndarray, level: float = 0.95, ratio: float = 0.0
               ) -> tuple[float, float]:
    """Student-t interval of the mean over folds (NaN with fewer than two folds); ``ratio`` =
    n_test / n_train > 0 applies the Nadeau–Bengio correction for overlapping training sets."""
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    se = values.std(ddof=1) * np.sqrt(1 / len(values) + ratio)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * se
    return float(values.mean() - half), float(values.mean() + half)


#: metrics that are not proportions in [0, 1] (their intervals are not clipped)
UNBOUNDED = re.compile(r".*(nll|temperature|set_size|_drop|accepted|batches|tune_).*")


def bounded(col: str, values: np.ndarray) -> bool:
    """Whether ``col`` is a proportion: its interval is clipped to [0, 1]."""
    finite = values[np.isfinite(values)]
    return (not UNBOUNDED.fullmatch(col) and finite.size > 0
            and finite.min() >= 0.0 and finite.max() <= 1.0)


def summarise(folds: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, setting): ``<metric>_mean``, ``_std``, ``_ci95_low``, ``_ci95_high``
    (clipped to [0, 1] for proportions, see ``bounded``)."""
    metrics = metric_columns(folds)
    rows = []
    repeat = folds["repeat"] if "repeat" in folds else pd.Series(0, folds.index)
    for (variant, setting), part in folds.groupby(KEYS, sort=False):
        part_repeat = repeat.loc[part.index]
        row = {"variant": variant, "setting": setting, "n_folds": len(part),
               "n_repeats": int(part_repeat.nunique())}
        if "aliases" in part:
            row["aliases"] = "|".join(sorted({a for names in part["aliases"].dropna()
                                              for a in str(names).split("|") if a}))
        ratio = held_out_ratio(part)
        for col in metrics:
            v = part[col].to_numpy(dtype=float)
            if np.isnan(v).all():
                continue
            lo, hi = t_interval(v, ratio=ratio)
            if bounded(col, v):  # a proportion's interval stays inside [0, 1]
                lo, hi = max(lo, 0.0), min(hi, 1.0)
            if col in HEADLINE and row["n_repeats"] > 1:
                row[f"{col}_repeat_std"] = float(part[col].groupby(part_repeat).mean().std(ddof=1))
            row.update({f"{col}_mean": np.nanmean(v), f"{col}_std": np.nanstd(v, ddof=1)
                        if (~np.isnan(v)).sum() > 1 else float("nan"),
                        f"{col}_ci95_low": lo, f"{col}_ci95_high": hi})
        for col in PROVENANCE:
            if col in part:
                row[col] = "|".join(sorted(map(str, part[col].dropna().unique())))
        rows.append(row)
    board = add_tied_with_best(pd.DataFrame(rows), folds)
    if "cls_macro_f1_mean" in board:
        board = board.sort_values("cls_macro_f1_mean", ascending=False, kind="stable")
    first = KEYS + [c for c in ("n_folds", "n_repeats", "aliases") if c in board]
    prov = [c for c in PROVENANCE if c in board]
    rest = [c for c in board.columns if c not in first and c not in prov]
    return board[first + rest + prov].reset_index(drop=True)


def add_tied_with_best(board: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """``board`` with ``p_worse_than_best`` and ``tied_with_best`` merged on (variant, setting)
    (unchanged when the folds have no macro-F1)."""

    if board.empty or "cls_macro_f1" not in folds:
        return board
    ties = tied_with_best(folds)
    if ties.empty:
        return board
    return board.merge(ties, on=KEYS, how="left")


def merge_runs(boards: list[pd.DataFrame]) -> pd.DataFrame:
    """The cross-run leaderboard: grouped by data set and profile, best macro-F1 first."""
    if not boards:
        return pd.DataFrame()
    merged = pd.concat(boards, ignore_index=True)
    order = [c for c in ("run_data_fingerprint", "run_profile", "run") if c in merged]
    if "cls_macro_f1_mean" in merged:
        merged = merged.sort_values(order + ["cls_macro_f1_mean"],
                                    ascending=[True] * len(order) + [False], kind="stable")
    return merged.reset_index(drop=True)
