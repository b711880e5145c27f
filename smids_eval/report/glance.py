"""The report's first screen: "At a glance" (one line per question a lab asks, each linking to
its section) and "Limits of this run" (what the numbers are not).

Both read the run's tables through a ``markdown.Report`` (duck-typed: ``folds``, ``board``,
``config``, ``random_split_run``); every number is recomputed from the per-fold rows, so the
block agrees with the sections it links to."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..evaluate import BATCH_ALPHA
from ..evaluate.ood import FLAG
from ..evaluate.shifts import SEVERITIES
from ..run_folder import folds_table
from .selection import selected_summary, selected_text
from .tidy import ood_tier, pick, shift_sets

RF_SUFFIX = "+RF"


def anchor(title: str) -> str:
    """GitHub's anchor of a ``## title`` heading."""
    return "#" + re.sub(r"[^\w\- ]", "", title.lower()).strip().replace(" ", "-")


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(float(x)) else f"{float(x):.{digits}f}"


def _arm_rows(folds: pd.DataFrame, arm: tuple[str, str]) -> pd.DataFrame:
    return folds[(folds["variant"] == arm[0]) & (folds["setting"] == arm[1])]


def _best(board: pd.DataFrame, rf: bool) -> pd.Series | None:
    if board.empty or "cls_macro_f1_mean" not in board:
        return None
    part = board[board["variant"].str.endswith(RF_SUFFIX) == rf]
    return None if part.empty else part.sort_values("cls_macro_f1_mean", ascending=False).iloc[0]


def _interval(row: pd.Series, metric: str) -> str:
    lo, hi = row.get(f"{metric}_ci95_low", np.nan), row.get(f"{metric}_ci95_high", np.nan)
    mean = row.get(f"{metric}_mean", np.nan)
    return f"{_f(mean)}" + (f" [{_f(lo)}, {_f(hi)}]" if np.isfinite(float(lo)) else "")


def _tier_sets(sets: set[str]) -> dict[str, list[str]]:
    """The OOD sets of each tier the block reports (held-out fold and milder shifts left out)."""
    strongest = shift_sets((max(SEVERITIES),))
    return {"foreign-lab sets": sorted(s for s in sets if ood_tier(s) == "foreign lab"),
            "strongest synthetic shifts": sorted(s for s in sets if s in strongest),
            "far OOD (noise, textures, photos)": sorted(s for s in sets
                                                        if ood_tier(s) == "far OOD (sanity)")}


def glance_facts(r) -> dict[str, object]:
    """The numbers of the block, for the text and for tests."""
    facts: dict[str, object] = {}
    best = _best(r.board, rf=False)
    if best is None:
        return facts
    arm = (best["variant"], best["setting"])
    rows = _arm_rows(r.folds, arm)
    facts["best"] = arm
    if "tied_with_best" in r.board:
        tied = r.board[r.board["tied_with_best"].astype(str).str.lower().isin(("true", "1.0"))]
        facts["tied"] = [(v, s) for v, s in zip(tied["variant"], tied["setting"], strict=True)
                         if (v, s) != arm]
    facts["macro_f1"] = _interval(best, "cls_macro_f1")
    facts["selected"] = selected_summary(r.folds)
    facts["abnormal_recall"] = _interval(best, "cls_recall_abnormal_sperm")
    for key in ("cal_ece", "cal_ece_ts"):
        if key in rows:
            facts[key] = float(rows[key].mean())
    if {"sel_val_thr_accepted_msp", "n_test"} <= set(rows):
        accepted = rows["sel_val_thr_accepted_msp"].fillna(0)
        errors = (rows["sel_val_thr_risk_msp"].fillna(0) * accepted).sum()
        facts["decided"] = int(accepted.sum())
        facts["crops"] = int(rows["n_test"].sum())
        facts["realised_risk"] = float(errors / accepted.sum()) if accepted.sum() else np.nan
        target = float(r.config.get("profile", {}).get("evaluate", {}).get("risk_target", 0.05))
        facts["risk_target"] = target
        facts["risk_over_target_rows"] = int((rows["sel_val_thr_risk_msp"] > target + 1e-12).sum())
        facts["fold_rows"] = len(rows)
    flag = "ood_heldout_in_distribution_flagged"
    if flag in rows:
        facts["false_alarm"] = float(rows[flag].mean())
        facts["false_alarm_range"] = (float(rows[flag].min()), float(rows[flag].max()))
        tidy = pick(getattr(r, "metrics", pd.DataFrame()), variant=arm[0], setting=arm[1])
        flagged = pick(tidy, family="ood", method=FLAG, metric="flagged")
        for tier, sets in _tier_sets(set(flagged["set"]) if not flagged.empty else set()).items():
            if sets:
                per_set = pick(flagged, set=sets).groupby("set")["value"].mean()
                facts[f"tier:{tier}"] = float(per_set.mean())
    if "batch_heldout_false_alarm" in rows:
        facts["batch_false_alarm"] = float(rows["batch_heldout_false_alarm"].mean())
        tidy = pick(getattr(r, "metrics", pd.DataFrame()), variant=arm[0], setting=arm[1])
        p_values = pick(tidy, family="batch", metric="p")
        labs = p_values[[ood_tier(s) == "foreign lab" for s in p_values["set"]]] \
            if not p_values.empty else p_values
        if not labs.empty:
            facts["batch_labs_flagged"] = float((labs["value"] < BATCH_ALPHA).mean())
    rf = _best(r.board, rf=True)
    if rf is not None:
        facts["rf"] = (rf["variant"], float(rf["cls_macro_f1_mean"]))
    random_dir = getattr(r, "random_split_run", None)
    if random_dir is not None and folds_table(random_dir).is_file():
        rand = pd.read_csv(folds_table(random_dir))
        shared = set(zip(rand["variant"], rand["setting"], strict=True))
        pairs = [a for a in shared if not _arm_rows(r.folds, a).empty]
        if pairs:
            a = sorted(pairs)[0]
            facts["optimism"] = (a, float(_arm_rows(rand, a)["cls_macro_f1"].mean()
                                          - _arm_rows(r.folds, a)["cls_macro_f1"].mean()))
    return facts


def at_a_glance(r) -> list[str]:
    """One line per question, each linking to the section with the detail."""
    facts = glance_facts(r)
    if "best" not in facts:
        return ["No finished neural arm with macro-F1 in this run.", ""]
    v, s = facts["best"]
    lines = []
    tied = facts.get("tied")
    tied_text = ("; statistically tied with it (not clearly worse, Bayesian test with a 0.01 "
                 "ROPE): " + ", ".join(f"{a} [{b}]" for a, b in tied)) if tied else (
        "; no other arm is tied with it" if tied is not None else "")
    lines.append(f"- **Best arm**: {v} [{s}], macro-F1 {facts['macro_f1']}{tied_text}. "
                 f"([leaderboard]({anchor('Leaderboard')}), "
                 f"[comparisons]({anchor('Significant comparisons')}))")
    if facts["selected"]:
        lines.append(f"- **Selected pipeline** (unbiased): {selected_text(facts['selected'])}; "
                     f"the best arm's own figure above is an exploratory ranking on the test "
                     f"folds. ([leaderboard]({anchor('Leaderboard')}))")
    lines.append(f"- **Abnormal-sperm recall** (the study's key figure): "
                 f"{facts['abnormal_recall']}. ([per-class recall]({anchor('Per-class recall')}))")
    if "cal_ece" in facts and "cal_ece_ts" in facts:
        verdict = ("well calibrated after temperature scaling" if facts["cal_ece_ts"] <= 0.05
                   else "still miscalibrated after temperature scaling")
        lines.append(f"- **Calibration**: ECE {_f(facts['cal_ece'])} raw → "
                     f"{_f(facts['cal_ece_ts'])} after temperature scaling (mean over folds), "
                     f"{verdict}. ([calibration]({anchor('Calibration')}))")
    if "decided" in facts:
        target = facts["risk_target"]
        lines.append(f"- **Decided alone at {target:.0%} risk**: {facts['decided']} of "
                     f"{facts['crops']} held-out crops "
                     f"({_f(facts['decided'] / max(facts['crops'], 1), 2)}) pass the validation "
                     f"threshold with its 90% guarantee; their realised error rate is "
                     f"{_f(facts['realised_risk'])} ({facts['risk_over_target_rows']} of "
                     f"{facts['fold_rows']} fold rows above {target:.0%}); the rest go to the "
                     f"embryologist. "
                     f"([selective prediction]({anchor('Selective prediction')}))")
    if "false_alarm" in facts:
        lo, hi = facts["false_alarm_range"]
        tiers = "; ".join(f"{k[5:]} {_f(val, 2)}" for k, val in facts.items()
                          if k.startswith("tier:"))
        lines.append(f"- **Out-of-distribution flag**: false alarms on new acquisition groups of "
                     f"this lab {_f(facts['false_alarm'])} (per fold {_f(lo, 2)}–{_f(hi, 2)})"
                     f"{'; flagged share: ' + tiers if tiers else ''}. "
                     f"([OOD detection]({anchor('Out-of-distribution detection')}))")
    if "batch_false_alarm" in facts:
        lines.append(f"- **Whole folder as a batch**: false alarms on batches of 50 from one new "
                     f"acquisition group {_f(facts['batch_false_alarm'], 2)}; foreign-lab "
                     f"batches flagged {_f(facts.get('batch_labs_flagged', np.nan), 2)}. "
                     f"([OOD detection]({anchor('Out-of-distribution detection')}))")
    if "rf" in facts:
        name, f1 = facts["rf"]
        lines.append(f"- **Random-forest head**: best {name} macro-F1 {_f(f1)} vs neural "
                     f"{facts['macro_f1'].split(' ')[0]}. "
                     f"([RF vs neural]({anchor('Neural head vs random-forest head')}))")
    if "optimism" in facts:
        (a, b), gap = facts["optimism"]
        lines.append(f"- **Grouping optimism**: a random split scores {a} [{b}] {_f(gap, 3)} "
                     f"macro-F1 {'higher' if gap >= 0 else 'lower'} than grouped CV. "
                     f"([grouped vs random]({anchor('Grouped vs random split')}))")
    return lines + [""]


#: what the study as designed used, against which a profile's reductions are listed
DESIGN = {("data", "image_size"): (224, "px"), ("train", "epochs"): (None, "epochs"),
          ("tune", "trials"): (None, "Optuna trials"), ("cv", "repeats"): (None, "repeats")}


def limits(r) -> list[str]:
    """What these numbers are not: weights, groups, profile reductions, synthetic shifts."""
    folds, config = r.folds, r.config
    weights = "|".join(sorted(map(str, folds.get("run_weights", pd.Series(dtype=str))
                                  .dropna().unique())))
    grouping = str(config.get("grouping", ""))
    profile = config.get("profile", {})
    out = []
    if "random" in weights or not weights:
        out.append("> - **Weights: random initialisation, NOT ImageNet-pretrained** (no ImageNet "
                   "file was available). The study fine-tunes a pretrained VGG19; read the "
                   "numbers as a check of the pipeline and of relative behaviour, not as the "
                   "study's accuracy.")
    else:
        out.append(f"> - Weights: {weights}.")
    out.append("> - **Groups: " + ("from a manifest" if grouping == "manifest" else
                                   "inferred acquisition groups (clusters of image statistics), "
                                   "not donors") + "**; re-crops of one cell are kept together.")
    reductions = []
    full = {"data": {"image_size": 224}}
    try:
        from ..config import load_profile

        full = load_profile("full").as_dict()
    except Exception:  # noqa: BLE001 - the box still lists what it can
        pass
    for (section, key), (_, unit) in DESIGN.items():
        have = profile.get(section, {}).get(key)
        want = full.get(section, {}).get(key)
        if have is not None and want is not None and have != want:
            reductions.append(f"{have} {unit} (full profile: {want})")
    if reductions:
        out.append(f"> - **Profile '{profile.get('name', '?')}' is reduced**: "
                   + ", ".join(reductions) + ".")
    out.append("> - **Shifts and foreign labs are synthetic** (stain, blur, zoom, generated "
               "labs); real images from other labs may behave differently: test them with "
               "`--ood-dir` or `predict`.")
    source = str(config.get("data", {}).get("kind", "")) or str(
        folds.get("run_data_source", pd.Series([""])).iloc[0])
    if "synthetic" in source:
        out.append("> - **Data: the synthetic SMIDS-like set**, a pipeline demonstration; its "
                   "numbers say nothing about real sperm images.")
    return out + [""]
