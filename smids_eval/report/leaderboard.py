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

import numpy as np
import pandas as pd
from scipy import stats

from ..evaluate.ood import FLAG
from ..metric_names import HELD_OUT, column, qualified
from .comparisons import KEY_METRIC, held_out_ratio, tied_with_best

#: identifies one leaderboard row
KEYS = ["variant", "setting"]
#: provenance columns copied into every leaderboard row (identical across a run's folds)
PROVENANCE = ["run", "run_commit", "run_profile", "run_device", "run_hardware", "run_precision",
              "run_weights",
              "run_grouping", "run_split", "run_data_source", "run_data_fingerprint", "run_seed"]
#: the headline metrics, the study's key figure (recall on abnormal cells) first
HEADLINE = ["cls_recall_abnormal_sperm", "cls_macro_f1", "cls_accuracy", "cls_balanced_accuracy",
            "cls_recall_normal_sperm", "cls_recall_non_sperm",
            # selective: coverage of the validation-fitted (risk-controlling) threshold and the
            # risk it realises on the held-out fold; the test-chosen figure is sel_oracle_*
            "sel_val_thr_coverage_msp", "sel_val_thr_risk_msp",
            # false alarms of the in-distribution rule on new acquisition groups
            "ood_heldout_in_distribution_flagged"]
#: how the report names the classification headline columns (no name is parsed for a label)
LABELS = {"cls_recall_abnormal_sperm": "recall abnormal sperm", "cls_macro_f1": "macro f1",
          "cls_accuracy": "accuracy", "cls_balanced_accuracy": "balanced accuracy",
          "cls_recall_normal_sperm": "recall normal sperm",
          "cls_recall_non_sperm": "recall non sperm"}


def _on_leaderboard(part: pd.Series) -> bool:
    """folds.csv.gz keeps everything; the leaderboard keeps no counts, AUROC (and the
    in-distribution rule's flagged share) for OOD and accuracy for shifts."""
    if part["kind"] == "count":
        return False
    if part["family"] == "ood":
        return part["metric"] == "auroc" or (part["method"] == FLAG and part["metric"] == "flagged")
    if part["family"] == "shift":
        return part["metric"] == "accuracy"
    return True


def metric_columns(folds: pd.DataFrame, parts: pd.DataFrame) -> list[str]:
    """The metric columns of ``folds`` that get mean/std/CI, headline first; ``parts`` = one row
    per metric column with its tidy parts and kind (``RunFolder.tidy``)."""
    listed = parts[parts.apply(_on_leaderboard, axis=1)]["column"] if not parts.empty else []
    cols = [c for c in listed if c in folds and pd.api.types.is_numeric_dtype(folds[c])]
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


def bounded(kind: str, values: np.ndarray) -> bool:
    """Whether a metric of ``kind`` (``metric_names.KINDS``) with these fold ``values`` is a
    proportion: its interval is clipped to [0, 1]."""
    finite = values[np.isfinite(values)]
    return (kind == "proportion" and finite.size > 0
            and finite.min() >= 0.0 and finite.max() <= 1.0)


def summarise(folds: pd.DataFrame, parts: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, setting): ``<metric>_mean``, ``_std``, ``_ci95_low``, ``_ci95_high``
    (clipped to [0, 1] for proportions, see ``bounded``) for the metric columns described by
    ``parts`` (``RunFolder.tidy``; ``metric_names.parts_frame`` for hand-made folds)."""
    metrics = metric_columns(folds, parts)
    kind = dict(zip(parts["column"], parts["kind"], strict=True)) if not parts.empty else {}
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
            if bounded(kind[col], v):  # a proportion's interval stays inside [0, 1]
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


#: provenance columns of the compact summary (which run, code, profile, weights, grouping)
SUMMARY_PROVENANCE = ["run", "run_commit", "run_profile", "run_weights", "run_grouping"]
_RECALL = column("classification", HELD_OUT, "", qualified("recall", cls="abnormal_sperm"))
_F1 = KEY_METRIC
#: summary column -> leaderboard column (configuration as data; order = column order)
SUMMARY_COLUMNS = {
    "n_folds": "n_folds",
    "abnormal_recall": f"{_RECALL}_mean",
    "abnormal_recall_ci95_low": f"{_RECALL}_ci95_low",
    "abnormal_recall_ci95_high": f"{_RECALL}_ci95_high",
    "macro_f1": f"{_F1}_mean",
    "macro_f1_ci95_low": f"{_F1}_ci95_low",
    "macro_f1_ci95_high": f"{_F1}_ci95_high",
    "accuracy": f"{column('classification', HELD_OUT, '', 'accuracy')}_mean",
    "tied_with_best": "tied_with_best",
    "selective_coverage": f"{column('selective', HELD_OUT, 'msp', 'val_thr_coverage')}_mean",
    "selective_risk": f"{column('selective', HELD_OUT, 'msp', 'val_thr_risk')}_mean",
    "heldout_flagged": f"{column('ood', HELD_OUT, FLAG, 'flagged')}_mean",
}


def compact(board: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``leaderboard_summary.csv``: provenance, then arm, aliases (other names of the same
    computation) and the headline numbers rounded to ``digits``, one row per distinct
    computation (the leaderboard's rows), best macro-F1 first. Selective coverage / risk are
    those of the validation-fitted threshold on max probability; ``heldout_flagged`` is the
    in-distribution rule's false-alarm share on the held-out acquisition groups."""
    if board.empty:
        return pd.DataFrame()
    out = board[[c for c in SUMMARY_PROVENANCE if c in board]].copy()
    out["variant"], out["setting"] = board["variant"], board["setting"]
    out["aliases"] = board["aliases"] if "aliases" in board else ""
    for name, source in SUMMARY_COLUMNS.items():
        out[name] = board[source] if source in board else np.nan
    numeric = [c for c in SUMMARY_COLUMNS if c not in ("n_folds", "tied_with_best")]
    out[numeric] = out[numeric].astype(float).round(digits)
    out = out.drop_duplicates(["variant", "setting"])
    return out.sort_values("macro_f1", ascending=False, kind="stable").reset_index(drop=True)


def merge_summaries(summaries: list[pd.DataFrame]) -> pd.DataFrame:
    """The cross-run summary: grouped by run, best macro-F1 first within each."""
    frames = [s for s in summaries if not s.empty]
    if not frames:
        return pd.DataFrame()
    merged = pd.concat(frames, ignore_index=True)
    keys = [c for c in ("run_profile", "run") if c in merged]
    return merged.sort_values(keys + ["macro_f1"], ascending=[True] * len(keys) + [False],
                              kind="stable").reset_index(drop=True)
