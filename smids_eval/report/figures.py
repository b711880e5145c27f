"""Figures of a run folder (PNG, written atomically into ``RUN/figures/``).

Each figure is one small function that takes tables already read from the run folder and the
output path, and returns the path; loaders for the run folder's per-fold files sit at the top.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .. import CLASSES  # noqa: E402
from ..data.classes import SLUGS  # noqa: E402
from ..evaluate.calibration import calibration_errors, reliability_bins  # noqa: E402
from ..evaluate.selective import risk_coverage_curve  # noqa: E402
from ..io import atomic_open  # noqa: E402
from ..naming import RF_SUFFIX, arm_label, is_rf  # noqa: E402
from ..outputs import softmax  # noqa: E402
from ..run_folder import RunFolder  # noqa: E402
from .leaderboard import LABELS  # noqa: E402
from .tidy import pick, shift_sets  # noqa: E402

DPI = 110
#: no side of a written PNG exceeds this many pixels (``save`` lowers the dpi to fit)
MAX_PX = 2000
#: accuracy / recall / macro-F1 of guessing among the three classes, and its error rate
CHANCE = 1.0 / len(CLASSES)
#: line styles cycled together with the colours, so no two arms of a figure look alike
LINE_STYLES = ("-", "--", "-.", ":")
SHORT = {"Normal_Sperm": "N", "Abnormal_Sperm": "A", "Non-Sperm": "X"}
sns.set_theme(style="whitegrid", context="paper")


# --------------------------------------------------------------------------- helpers and loaders


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    return struct.unpack(">II", data[16:24])


def _render(fig, dpi: float) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save(fig, path: str | Path, max_px: int = MAX_PX) -> Path:
    """Write ``fig`` as PNG atomically and close it; the dpi is lowered until neither side
    exceeds ``max_px`` pixels, so no figure of the report is too large to read on a screen."""
    path = Path(path)
    dpi = DPI
    data = _render(fig, dpi)
    for _ in range(5):
        side = max(png_size(data))
        if side <= max_px:
            break
        dpi *= 0.98 * max_px / side
        data = _render(fig, dpi)
    else:
        raise ValueError(f"{path.name}: could not fit {png_size(data)} px into {max_px} px")
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    plt.close(fig)
    return path


arm = arm_label  # short alias used throughout the figures


def load_predictions(root: str | Path) -> pd.DataFrame:
    """Every held-out prediction of the run (empty frame when there are none)."""
    files = RunFolder(Path(root)).prediction_files()
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_csv(f[-1]) for f in files], ignore_index=True)


def load_histories(root: str | Path) -> pd.DataFrame:
    """Training histories with ``variant``, ``repeat``, ``fold`` and ``setting`` columns."""
    frames = []
    for arm, repeat, fold, setting, f in RunFolder(Path(root)).history_files():
        if f.stat().st_size > 0:
            frames.append(pd.read_csv(f).assign(variant=arm, repeat=repeat, fold=fold,
                                                setting=setting))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def prob_matrix(preds: pd.DataFrame, prefix: str = "prob_") -> np.ndarray:
    return preds[[f"{prefix}{s}" for s in SLUGS]].to_numpy(dtype=float)


def label_index(names: pd.Series) -> np.ndarray:
    return names.map({c: i for i, c in enumerate(CLASSES)}).to_numpy(dtype=int)


def temperature_scaled(probs: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """softmax(log p / T) row by row (``temperature`` broadcast per row)."""
    return softmax(np.log(np.clip(probs, 1e-12, 1.0))
                   / np.asarray(temperature, dtype=float).reshape(-1, 1))


def fold_temperatures(preds: pd.DataFrame, folds: pd.DataFrame) -> np.ndarray:
    """The ``cal_temperature`` of each prediction row's own (variant, setting, repeat, fold);
    1 (no scaling) where the fold has none."""
    folds = folds if "repeat" in folds else folds.assign(repeat=0)
    if "cal_temperature" not in folds:
        return np.ones(len(preds))
    temps = folds.set_index(["variant", "setting", "repeat", "fold"])["cal_temperature"]
    repeats = preds["repeat"] if "repeat" in preds else pd.Series(0, index=preds.index)
    keys = zip(preds["variant"], preds["setting"], repeats, preds["fold"], strict=True)
    return np.nan_to_num(np.array([temps.get(k, 1.0) for k in keys], dtype=float), nan=1.0)


def calibrated_probs(preds: pd.DataFrame, folds: pd.DataFrame) -> np.ndarray:
    """Held-out probabilities after each fold's temperature scaling (what ``predict`` reports)."""
    return temperature_scaled(prob_matrix(preds), fold_temperatures(preds, folds))


def fold_mean_ece(preds: pd.DataFrame, folds: pd.DataFrame) -> tuple[float, float]:
    """ECE raw and after temperature scaling, computed per held-out fold with the evaluation's
    ``calibration_errors`` and averaged over folds: the statistic of the calibration table
    (``cal_ece`` / ``cal_ece_ts`` mean over folds), not the ECE of the pooled predictions."""
    scaled = calibrated_probs(preds, folds)
    labels = label_index(preds["label"])
    keys = [c for c in ("repeat", "fold") if c in preds]
    raw, ts = [], []
    for _, idx in preds.reset_index(drop=True).groupby(keys).groups.items():
        idx = np.asarray(idx)
        raw.append(calibration_errors(prob_matrix(preds.iloc[idx]), labels[idx])["ece"])
        ts.append(calibration_errors(scaled[idx], labels[idx])["ece"])
    return float(np.mean(raw)), float(np.mean(ts))


def arm_styles(arms: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """A distinct (colour, line style) per arm: a colour-blind palette for colours, line styles
    cycled against it so arms beyond the palette's length still differ."""
    colours = sns.color_palette("colorblind", min(len(arms), 10) or 1)
    return {a: {"color": colours[i % len(colours)],
                "ls": LINE_STYLES[i % len(LINE_STYLES)]}
            for i, a in enumerate(arms)}


def legend_outside(fig, **kwargs) -> None:
    """One figure-level legend to the right of every panel (never over the data)."""
    handles, labels = {}, []
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles and not lab.startswith("_"):
                handles[lab] = h
                labels.append(lab)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside right upper",
                   fontsize="small", **kwargs)


def _subplots(*args, **kwargs):
    return plt.subplots(*args, layout="constrained", **kwargs)


def _grid(n: int, cols: int, size: float = 3.0, height: float | None = None):
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig, axes = _subplots(rows, cols, figsize=(size * cols, (height or size) * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


# --------------------------------------------------------------------------- data exploration


def label_distribution(labels: pd.Series, path: Path) -> Path:
    """Number of crops per class."""
    counts = labels.value_counts().reindex(CLASSES, fill_value=0)
    fig, ax = _subplots(figsize=(5, 3))
    sns.barplot(x=counts.index, y=counts.values, hue=counts.index, ax=ax, legend=False)
    for i, n in enumerate(counts.values):
        ax.annotate(str(n), (i, n), ha="center", va="bottom")
    ax.set(xlabel="", ylabel="crops", title="Label distribution")
    return save(fig, path)


def image_sizes(original_sizes: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """Original width × height of the crops, coloured by class."""
    frame = pd.DataFrame({"width": original_sizes[:, 0], "height": original_sizes[:, 1],
                          "class": np.asarray(CLASSES)[labels]})
    fig, ax = _subplots(figsize=(5, 4))
    sns.scatterplot(frame, x="width", y="height", hue="class", style="class", alpha=0.5, ax=ax,
                    s=14)
    ax.set(title="Original image size", xlabel="width (px)", ylabel="height (px)")
    legend_outside(fig)
    return save(fig, path)


# --------------------------------------------------------------------------- classification


def leaderboard_bars(board: pd.DataFrame, path: Path,
                     metrics=("cls_recall_abnormal_sperm", "cls_macro_f1")) -> Path:
    """Mean over folds with its 95% interval, one panel per metric, one bar per arm, the best
    macro-F1 on top; the dashed line is chance (1/3 for three classes)."""
    if "cls_macro_f1_mean" in board:
        board = board.sort_values("cls_macro_f1_mean", ascending=False, kind="stable")
    labels = [arm(v, s) for v, s in zip(board["variant"], board["setting"], strict=True)]
    y = np.arange(len(board))
    fig, axes = _subplots(1, len(metrics), figsize=(4.0 * len(metrics) + 1.5,
                                                    0.28 * len(board) + 1.6),
                          sharey=True, squeeze=False)
    colours = ["#999999" if is_rf(v) else "#4c72b0" for v in board["variant"]]
    for ax, metric in zip(axes.flat, metrics, strict=True):
        nan = pd.Series(np.nan, index=board.index)
        mean = board.get(f"{metric}_mean", nan).to_numpy(float)
        lo = board.get(f"{metric}_ci95_low", nan).to_numpy(float)
        hi = board.get(f"{metric}_ci95_high", nan).to_numpy(float)
        err = np.nan_to_num(np.vstack([mean - lo, hi - mean]), nan=0.0).clip(min=0)
        ax.barh(y, mean, xerr=err, color=colours, capsize=2, height=0.7)
        ax.axvline(CHANCE, color="0.2", ls="--", lw=1, label="chance (1/3)")
        name = nice_metric(metric)
        ax.set(xlim=(0, 1), xlabel=f"{name} (fraction, 0–1)", title=name)
    axes[0, 0].set_yticks(y, labels)
    axes[0, 0].invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color="#4c72b0"),
               plt.Rectangle((0, 0), 1, 1, color="#999999"),
               plt.Line2D([], [], color="0.2", ls="--", lw=1)]
    fig.legend(handles, ["neural head", "random-forest head", "chance (1/3)"],
               loc="outside right upper", fontsize="small")
    fig.suptitle("Mean over outer folds with 95% interval, best macro-F1 first")
    return save(fig, path)


def nice_metric(metric: str) -> str:
    return LABELS.get(metric, metric).replace("f1", "F1")


def confusion_counts(part: pd.DataFrame) -> np.ndarray:
    """(true, predicted) counts summed over the folds in ``part``."""
    return np.array([[part.get(f"cls_cm_{t}_{p}", pd.Series(dtype=float)).sum() for p in SLUGS]
                     for t in SLUGS], dtype=float)


def confusion_matrices(folds: pd.DataFrame, arms: list[tuple[str, str]], path: Path,
                       cols: int = 5) -> Path:
    """The first arm (the best) large, with counts and row fractions; the other arms as small
    multiples of row fractions on the same 0-1 colour scale. Counts are summed over folds."""
    best, others = arms[0], arms[1:]
    rows = int(np.ceil(len(others) / cols)) if others else 0
    small = 2.0
    fig = plt.figure(layout="constrained",
                     figsize=(4.8 + small * min(cols, len(others)), max(4.4, small * rows + 0.6)))
    left, right = (fig.subfigures(1, 2, width_ratios=[4.8, small * min(cols, len(others))])
                   if others else (fig, None))
    ax = left.subplots()
    cm = confusion_counts(_arm_rows(folds, best))
    frac = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    text = np.array([[f"{c:.0f}\n{f:.2f}" for c, f in zip(rc, rf, strict=True)]
                     for rc, rf in zip(cm, frac, strict=True)])
    names = ["normal", "abnormal", "non-sperm"]
    sns.heatmap(frac, vmin=0, vmax=1, annot=text, fmt="", cmap="Blues", square=True, ax=ax,
                xticklabels=names, yticklabels=names,
                cbar_kws={"label": "row fraction (share of the true class)", "shrink": 0.7})
    ax.set(title=f"best: {arm(*best)}\ncrops (top) and row fraction", xlabel="predicted",
           ylabel="true")
    if others:
        axes = right.subplots(rows, min(cols, len(others)), squeeze=False).flat
        for ax in axes[len(others):]:
            ax.set_visible(False)
        short = list(SHORT.values())
        for ax, other in zip(axes, others, strict=False):
            cm = confusion_counts(_arm_rows(folds, other))
            sns.heatmap(cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None), vmin=0, vmax=1,
                        annot=True, fmt=".2f", annot_kws={"size": 6}, cmap="Blues", cbar=False,
                        square=True, xticklabels=short, yticklabels=short, ax=ax)
            ax.set_title(arm(*other), fontsize=7)
            ax.tick_params(labelsize=6)
        right.suptitle("other arms: row fractions (N normal, A abnormal, X non-sperm; "
                       "rows true, columns predicted)", fontsize=8)
    return save(fig, path)


def _arm_rows(frame: pd.DataFrame, arm_key: tuple[str, str]) -> pd.DataFrame:
    return frame[(frame["variant"] == arm_key[0]) & (frame["setting"] == arm_key[1])]


def training_curves(history: pd.DataFrame, path: Path, cols: int = 5) -> Path:
    """A grid with one cell per variant: losses (top) and validation macro-F1 (bottom, chance
    dashed) per epoch, one line per fold; solid = tuned, dashed = specified."""
    variants = sorted(history["variant"].unique())
    cols = max(1, min(cols, len(variants)))
    rows = int(np.ceil(len(variants) / cols))
    fig = plt.figure(layout="constrained", figsize=(3.0 * cols + 1.8, 4.0 * rows))
    cells = np.atleast_1d(fig.subfigures(rows, cols, squeeze=False).flat)
    lines = {"train loss": "C0", "validation loss": "C3", "validation macro-F1": "C2"}
    for cell, variant in zip(cells, variants, strict=False):
        loss_ax, f1_ax = cell.subplots(2, 1, sharex=True)
        part = history[history["variant"] == variant]
        for (_fold, setting), run in part.groupby(["fold", "setting"]):
            ls = "-" if setting == "tuned" else "--"
            loss_ax.plot(run["epoch"], run["train_loss"], ls=ls, color=lines["train loss"],
                         alpha=0.6, lw=1)
            loss_ax.plot(run["epoch"], run["val_loss"], ls=ls, color=lines["validation loss"],
                         alpha=0.6, lw=1)
            f1_ax.plot(run["epoch"], run["val_macro_f1"], ls=ls,
                       color=lines["validation macro-F1"], alpha=0.6, lw=1)
        f1_ax.axhline(CHANCE, color="0.3", ls=":", lw=1)
        loss_ax.set_title(variant)
        loss_ax.set_ylabel("cross-entropy (nats)")
        f1_ax.set(xlabel="epoch", ylabel="val macro-F1 (0–1)", ylim=(0, 1))
    for cell in cells[len(variants):]:
        cell.set_visible(False)
    handles = [plt.Line2D([], [], color=c) for c in lines.values()]
    handles += [plt.Line2D([], [], color="0.3", ls=ls) for ls in ("-", "--", ":")]
    fig.legend(handles, [*lines, "tuned", "specified", "chance (1/3)"],
               loc="outside right upper", fontsize="small")
    fig.suptitle("Training curves, one line per outer fold")
    return save(fig, path)


# --------------------------------------------------------------------------- confidence


def reliability(preds: pd.DataFrame, folds: pd.DataFrame, arms: list[tuple[str, str]],
                path: Path) -> Path:
    """Per arm (column): accuracy per confidence bin, raw and after each fold's temperature,
    overlaid on the diagonal, above a histogram of the confidences. The bins pool the held-out
    folds; the printed ECE is ``fold_mean_ece`` (the calibration table's statistic)."""
    fig, axes = _subplots(2, len(arms), figsize=(3.6 * len(arms) + 1.8, 5.2), squeeze=False,
                          sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    kinds = {"raw softmax": ("C0", "-", "o"), "temperature-scaled": ("C1", "--", "s")}
    for (top, hist), key in zip(axes.T, arms, strict=True):
        part = _arm_rows(preds, key)
        labels = label_index(part["label"])
        ece = fold_mean_ece(part, folds)
        for (name, (colour, ls, marker)), probs in zip(
                kinds.items(), (prob_matrix(part), calibrated_probs(part, folds)), strict=True):
            _, acc, conf, count = reliability_bins(probs, labels)
            filled = count > 0
            top.plot(conf[filled], acc[filled], color=colour, ls=ls, marker=marker, ms=4,
                     label=name)
            hist.hist(probs.max(1), bins=np.linspace(0, 1, 16), histtype="step", color=colour,
                      ls=ls)
        top.plot([0, 1], [0, 1], color="0.4", ls=":", lw=1, label="perfect calibration")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy in bin (0–1)",
                title=f"{arm(*key)}\nECE {ece[0]:.3f} raw → {ece[1]:.3f} scaled")
        hist.set(xlabel="confidence (max probability)", ylabel="crops")
    legend_outside(fig)
    fig.suptitle("Reliability (15 equal-width bins, held-out folds pooled); ECE = mean over "
                 "folds of the per-fold ECE", fontsize=9)
    return save(fig, path)


def risk_coverage(preds: pd.DataFrame, arms: list[tuple[str, str]], path: Path,
                  risk_target: float = 0.05,
                  points: dict[tuple[str, str], tuple[float, float]] | None = None) -> Path:
    """Selective risk vs coverage (accept the most confident crops first, max probability) for
    each arm, its validation-threshold operating point (``points``: fold-mean coverage and
    risk) as a marker and the target risk as a dashed line."""
    fig, ax = _subplots(figsize=(7.5, 4.8))
    styles = arm_styles(arms)
    top = risk_target
    for key in arms:
        part = _arm_rows(preds, key)
        probs = prob_matrix(part)
        correct = probs.argmax(1) == label_index(part["label"])
        cov, risk = risk_coverage_curve(probs.max(1), correct)
        ax.plot(cov, risk, label=arm(*key), lw=1.4, **styles[key])
        top = max([top, *risk[len(risk) // 50:]])
        if points and key in points and np.isfinite(points[key]).all():
            ax.plot(*points[key], marker="o", ms=7, color=styles[key]["color"], mec="black",
                    ls="none")
    ax.plot([], [], marker="o", color="white", mec="black", ls="none",
            label="validation-threshold operating point (fold mean)")
    ax.axhline(risk_target, color="0.2", ls="--", lw=1, label=f"target risk {risk_target:.0%}")
    ax.set(xlabel="coverage (fraction of crops decided by the model)",
           ylabel=f"risk (error rate among accepted; guessing {1 - CHANCE:.2f})", xlim=(0, 1),
           ylim=(0, min(1.0, 1.1 * top)), title="Risk–coverage (held-out folds pooled)")
    legend_outside(fig)
    return save(fig, path)


# --------------------------------------------------------------------------- robustness


def ood_table(metrics: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Mean of ``metric`` (auroc, fpr95, flagged) over the folds of the tidy ``metrics``
    (``metrics.csv.gz`` rows, usually one arm's): index = OOD set (``test`` = the held-out fold),
    columns = detector (``in_distribution`` = the rule predict uses)."""
    rows = pick(metrics, family="ood", metric=metric).dropna(subset=["value"])
    if rows.empty:
        return pd.DataFrame()
    return (rows.pivot_table(index="set", columns="method", values="value", aggfunc="mean")
            .rename_axis(index="set", columns="detector"))


def ood_heatmap(auroc: pd.DataFrame, fpr95: pd.DataFrame, tiers: dict[str, str], title: str,
                path: Path) -> Path:
    """AUROC (diverging 0-1 scale, 0.5 = chance as the neutral colour, so an inverted detector
    stands out) beside FPR at 95% TPR (0-1, lower is better), one block of rows per OOD tier
    (``tiers``: set → tier, blocks in the order of its first appearance)."""
    order = list(dict.fromkeys(tiers.get(s, "other") for s in auroc.index))
    blocks = [(t, sorted(s for s in auroc.index if tiers.get(s, "other") == t)) for t in order]
    fpr95 = fpr95.reindex(index=auroc.index, columns=auroc.columns)
    fig, axes = _subplots(len(blocks), 2, squeeze=False,
                          figsize=(1.1 * auroc.shape[1] + 4.5, 0.26 * len(auroc) + 0.7 * len(blocks) + 1.2),
                          gridspec_kw={"height_ratios": [max(len(b), 1) for _, b in blocks]})
    scales = (("AUROC", auroc, {"cmap": "RdBu", "center": 0.5},
               "AUROC (blue: detects, 0.5 = chance, red: inverted)"),
              ("FPR95", fpr95, {"cmap": "Reds"},
               "false-positive rate at 95% TPR (red: misses, lower is better)"))
    for i, (tier, sets) in enumerate(blocks):
        last = i == len(blocks) - 1
        for ax, (name, table, kwargs, label) in zip(axes[i], scales, strict=True):
            sns.heatmap(table.loc[sets], vmin=0, vmax=1, annot=True, fmt=".2f", ax=ax,
                        annot_kws={"size": 6}, cbar=last,
                        cbar_ax=None, cbar_kws={"label": label, "orientation": "horizontal"},
                        xticklabels=last, **kwargs)
            ax.set(title=f"{tier}: {name}", xlabel="detector" if last else "", ylabel="")
            ax.tick_params(labelsize=7)
    fig.suptitle(title)
    return save(fig, path)


def shift_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Long table from the tidy ``metrics``: variant, setting, shift, severity, accuracy
    (severity 0 = the clean subset: shifted accuracy + its drop)."""
    rows = pick(metrics, family="shift", metric=["accuracy", "accuracy_drop"])
    known = shift_sets()
    rows = rows[rows["set"].isin(known)] if not rows.empty else rows
    if rows.empty:
        return pd.DataFrame()
    means = rows.pivot_table(index=["variant", "setting", "set"], columns="metric",
                             values="value", aggfunc="mean").reset_index()
    means = means[means["accuracy"].notna()] if "accuracy" in means else means.iloc[:0]
    if means.empty:
        return pd.DataFrame()
    means["shift"] = [known[s][0] for s in means["set"]]
    means["severity"] = [known[s][1] for s in means["set"]]
    drop = means.get("accuracy_drop", pd.Series(np.nan, index=means.index))
    clean = means.assign(severity=0, accuracy=means["accuracy"] + drop)
    cols = ["variant", "setting", "shift", "severity", "accuracy"]
    shifted = means.sort_values(["variant", "setting", "shift", "severity"])[cols]
    clean = (clean.sort_values(["variant", "setting", "shift", "set"])[cols]
             .drop_duplicates(["variant", "setting", "shift"]))
    return pd.concat([shifted, clean], ignore_index=True).reset_index(drop=True)


def shift_accuracy(table: pd.DataFrame, path: Path, cols: int = 4) -> Path:
    """Accuracy by severity, one panel per shift, one line per arm (give at most six), each arm
    its own colour and line style; chance (1/3) dashed."""
    keys = list(dict.fromkeys(zip(table["variant"], table["setting"], strict=True)))
    styles = arm_styles(keys)
    shifts = sorted(table["shift"].unique())
    fig, axes = _grid(len(shifts), cols, size=2.8)
    severities = sorted(table["severity"].unique())
    for ax, shift in zip(axes, shifts, strict=False):
        part = table[table["shift"] == shift]
        for key in keys:
            line = _arm_rows(part, key).sort_values("severity")
            ax.plot(line["severity"], line["accuracy"], marker="o", ms=3, lw=1.2,
                    label=arm(*key), **styles[key])
        ax.axhline(CHANCE, color="0.4", ls=":", lw=1, label="chance (1/3)")
        ax.set(title=shift, ylim=(0, 1), xlabel="severity (0 = unshifted)",
               ylabel="accuracy (0–1)")
        ax.set_xticks(severities)
    legend_outside(fig)
    fig.suptitle("Accuracy under synthetic shift (severity 0 = the same crops unshifted)")
    return save(fig, path)


def rf_pairs(folds: pd.DataFrame, setting: str = "tuned") -> pd.DataFrame:
    """Per fold: macro-F1 of each variant's neural head and of its random-forest head."""
    rows = []
    folds = folds if "repeat" in folds else folds.assign(repeat=0)
    for variant in sorted(v for v in folds["variant"].unique() if is_rf(v)):
        base = variant.removesuffix(RF_SUFFIX)
        rf = folds[folds["variant"] == variant].set_index(["repeat", "fold"])["cls_macro_f1"]
        nn = folds[(folds["variant"] == base) & (folds["setting"] == setting)]
        nn = nn.set_index(["repeat", "fold"])["cls_macro_f1"]
        for key in rf.index.intersection(nn.index):
            rows.append({"variant": base, "repeat": key[0], "fold": key[1], "neural": nn[key],
                         "random_forest": rf[key]})
    return pd.DataFrame(rows)


def rf_vs_neural(pairs: pd.DataFrame, path: Path) -> Path:
    """Scatter of per-fold macro-F1, neural head vs random-forest head (diagonal = equal)."""
    fig, ax = _subplots(figsize=(5.5, 4.2))
    sns.scatterplot(pairs, x="random_forest", y="neural", hue="variant", style="variant", s=40,
                    ax=ax)
    ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="equal")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="random-forest head macro-F1 (0–1)",
           ylabel="neural head macro-F1 (0–1)", title="Neural vs random-forest head (per fold)")
    legend_outside(fig)
    return save(fig, path)


def grouped_vs_random(table: pd.DataFrame, path: Path) -> Path:
    """Mean ± std over folds of each metric under grouped and random splits."""
    fig, ax = _subplots(figsize=(6.5, 3.5))
    sns.barplot(table, x="metric", y="value", hue="split", errorbar="sd", ax=ax)
    ax.set(ylim=(0, 1), xlabel="", ylabel="mean over folds ± sd (0–1)",
           title="Grouped vs random split")
    legend_outside(fig)
    return save(fig, path)


# --------------------------------------------------------------------------- images


def _show(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def confident_errors(errors: pd.DataFrame, images: np.ndarray, path: Path) -> Path:
    """Gallery of misclassified crops, most confident first, titled with the file name and the
    calibrated class probabilities (``cal_prob_<slug>`` columns, temperature-scaled per fold);
    ``images[i]`` is the crop of ``errors.iloc[i]``."""
    fig, axes = _grid(len(errors), 4, size=2.4, height=2.9)
    for ax, img, (_, r) in zip(axes, images, errors.iterrows(), strict=False):
        probs = " ".join(f"{SHORT.get(c, c)}={r[f'cal_prob_{s}']:.2f}"
                         for c, s in zip(CLASSES, SLUGS, strict=True))
        name = Path(str(r["path"])).name
        name = name if len(name) <= 30 else "…" + name[-29:]
        _show(ax, img, f"{name}\ntrue {r['label']}\npred {r['predicted']}\n{probs}")
    fig.suptitle("Most confident errors, calibrated probabilities (temperature-scaled per "
                 "fold; N normal, A abnormal, X non-sperm)", fontsize=9)
    return save(fig, path)


def gradcam_grid(images: np.ndarray, cams: np.ndarray, titles: list[str], path: Path,
                 heading: str) -> Path:
    """Each crop next to its Grad-CAM overlay, with one colour bar for the relevance scale."""
    fig, axes = _subplots(len(images), 2, figsize=(5.2, 2.3 * len(images)), squeeze=False)
    shown = None
    for (a, b), img, cam, title in zip(axes, images, cams, titles, strict=True):
        _show(a, img, title)
        b.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        shown = b.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        b.set_title("Grad-CAM", fontsize=7)
        b.axis("off")
    if shown is not None:
        fig.colorbar(shown, ax=axes[:, 1], shrink=0.6,
                     label="Grad-CAM relevance (0–1, scaled per image)")
    fig.suptitle(heading, fontsize=9)
    return save(fig, path)
