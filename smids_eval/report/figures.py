"""Figures of a run folder (PNG, written atomically into ``RUN/figures/``).

Each figure is one small function that takes tables already read from the run folder and the
output path, and returns the path; loaders for the run folder's per-fold files sit at the top.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .. import CLASSES  # noqa: E402
from ..data.classes import SLUGS  # noqa: E402
from ..evaluate.calibration import plot_reliability  # noqa: E402
from ..evaluate.selective import risk_coverage_curve  # noqa: E402
from ..io import atomic_open  # noqa: E402
from ..naming import RF_SUFFIX, arm_label, is_rf  # noqa: E402
from ..outputs import softmax  # noqa: E402
from ..run_folder import RunFolder  # noqa: E402
from .tidy import pick, shift_sets  # noqa: E402

DPI = 110
sns.set_theme(style="whitegrid", context="paper")


# --------------------------------------------------------------------------- helpers and loaders


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI, bbox_inches="tight")
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
    sns.scatterplot(frame, x="width", y="height", hue="class", alpha=0.5, ax=ax, s=14)
    ax.set(title="Original image size (px)")
    return save(fig, path)


# --------------------------------------------------------------------------- classification


def leaderboard_bars(board: pd.DataFrame, path: Path,
                     metrics=("cls_recall_abnormal_sperm", "cls_macro_f1")) -> Path:
    """Mean over folds with 95% CI error bars, one panel per metric, one bar per arm."""
    labels = [arm(v, s) for v, s in zip(board["variant"], board["setting"], strict=True)]
    fig, axes = _subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.35 * len(board) + 1.5),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=True):
        mean = board.get(f"{metric}_mean", pd.Series(np.nan, index=board.index)).to_numpy(float)
        lo = board.get(f"{metric}_ci95_low", pd.Series(np.nan, index=board.index)).to_numpy(float)
        hi = board.get(f"{metric}_ci95_high", pd.Series(np.nan, index=board.index)).to_numpy(float)
        err = np.nan_to_num(np.vstack([mean - lo, hi - mean]), nan=0.0).clip(min=0)
        colours = ["#999999" if is_rf(v) else "#4c72b0" for v in board["variant"]]
        ax.barh(labels, mean, xerr=err, color=colours, capsize=3)
        ax.set(xlim=(0, 1), xlabel=metric.removeprefix("cls_"), title=metric.removeprefix("cls_"))
        ax.invert_yaxis()
    fig.suptitle("Mean over outer folds, 95% t-interval (grey: random-forest head)")
    return save(fig, path)


def per_class_recall(board: pd.DataFrame, path: Path) -> Path:
    """Recall of each class per arm."""
    rows = []
    for _, r in board.iterrows():
        for cls, slug in zip(CLASSES, SLUGS, strict=True):
            rows.append({"arm": arm(r["variant"], r["setting"]), "class": cls,
                         "recall": r.get(f"cls_recall_{slug}_mean", np.nan)})
    frame = pd.DataFrame(rows)
    fig, ax = _subplots(figsize=(max(6, 0.6 * len(board) + 2), 3.5))
    sns.barplot(frame, x="arm", y="recall", hue="class", ax=ax)
    ax.set(ylim=(0, 1), xlabel="", title="Per-class recall (mean over folds)")
    ax.tick_params(axis="x", rotation=60)
    for t in ax.get_xticklabels():
        t.set_ha("right")
    return save(fig, path)


def confusion_counts(part: pd.DataFrame) -> np.ndarray:
    """(true, predicted) counts summed over the folds in ``part``."""
    return np.array([[part.get(f"cls_cm_{t}_{p}", pd.Series(dtype=float)).sum() for p in SLUGS]
                     for t in SLUGS], dtype=float)


def confusion_matrices(folds: pd.DataFrame, path: Path) -> Path:
    """Row-normalised confusion matrix per arm, summed over folds, as small multiples."""
    groups = list(folds.groupby(["variant", "setting"], sort=True))
    fig, axes = _grid(len(groups), 4, size=3.2)
    short = ["normal", "abnormal", "non-sperm"]
    for ax, ((variant, setting), part) in zip(axes, groups, strict=False):
        cm = confusion_counts(part)
        norm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
        sns.heatmap(norm, vmin=0, vmax=1, annot=True, fmt=".2f", cmap="Blues", cbar=False,
                    xticklabels=short, yticklabels=short, ax=ax, square=True)
        ax.set(title=arm(variant, setting), xlabel="predicted", ylabel="true")
    return save(fig, path)


def training_curves(history: pd.DataFrame, path: Path) -> Path:
    """Losses and validation macro-F1 per epoch, one column per variant, one line per fold."""
    variants = sorted(history["variant"].unique())
    fig, axes = _subplots(2, len(variants), figsize=(3.6 * len(variants), 6), squeeze=False)
    for j, variant in enumerate(variants):
        part = history[history["variant"] == variant]
        for (_fold, setting), run in part.groupby(["fold", "setting"]):
            ls = "-" if setting == "tuned" else "--"
            axes[0, j].plot(run["epoch"], run["train_loss"], ls, color="C0", alpha=0.6)
            axes[0, j].plot(run["epoch"], run["val_loss"], ls, color="C3", alpha=0.6)
            axes[1, j].plot(run["epoch"], run["val_macro_f1"], ls, color="C2", alpha=0.6)
        axes[0, j].set(title=variant, ylabel="loss (blue train, red val)")
        axes[1, j].set(xlabel="epoch", ylabel="val macro-F1", ylim=(0, 1))
    fig.suptitle("Training curves (solid: tuned, dashed: specified; one line per fold)")
    return save(fig, path)


# --------------------------------------------------------------------------- confidence


def reliability(preds: pd.DataFrame, folds: pd.DataFrame, arms: list[tuple[str, str]],
                path: Path) -> Path:
    """Reliability diagrams before / after each fold's temperature, one row per arm."""
    fig, axes = _subplots(len(arms), 2, figsize=(8, 3.6 * len(arms)), squeeze=False)
    folds = folds if "repeat" in folds else folds.assign(repeat=0)
    temps = folds.set_index(["variant", "setting", "repeat", "fold"])["cal_temperature"]
    for row, (variant, setting) in zip(axes, arms, strict=True):
        part = preds[(preds["variant"] == variant) & (preds["setting"] == setting)]
        probs, labels = prob_matrix(part), label_index(part["label"])
        keys = zip(part["repeat"] if "repeat" in part else [0] * len(part), part["fold"],
                   strict=True)
        t = [temps.get((variant, setting, r, f), 1.0) for r, f in keys]
        plot_reliability(probs, labels, row[0], title=f"{arm(variant, setting)}: raw")
        plot_reliability(temperature_scaled(probs, np.nan_to_num(t, nan=1.0)), labels, row[1],
                         title="after temperature scaling")
    return save(fig, path)


def risk_coverage(preds: pd.DataFrame, arms: list[tuple[str, str]], path: Path,
                  risk_target: float = 0.05) -> Path:
    """Selective risk vs coverage (accept the most confident crops first, max probability)."""
    fig, ax = _subplots(figsize=(6, 4))
    for variant, setting in arms:
        part = preds[(preds["variant"] == variant) & (preds["setting"] == setting)]
        probs = prob_matrix(part)
        correct = probs.argmax(1) == label_index(part["label"])
        cov, risk = risk_coverage_curve(probs.max(1), correct)
        ax.plot(cov, risk, label=arm(variant, setting), ls=":" if is_rf(variant) else "-")
    ax.axhline(risk_target, color="0.3", ls="--", lw=1, label=f"{risk_target:.0%} risk")
    ax.set(xlabel="coverage (fraction decided by the model)", ylabel="risk (error among accepted)",
           xlim=(0, 1), ylim=(0, None), title="Risk-coverage (pooled held-out folds)")
    ax.legend(fontsize="x-small", ncol=2)
    return save(fig, path)


# --------------------------------------------------------------------------- robustness


def ood_table(metrics: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Mean of ``metric`` (auroc, fpr95, flagged) over the folds of the tidy ``metrics``
    (``metrics.csv`` rows, usually one arm's): index = OOD set (``test`` = the held-out fold),
    columns = detector (``in_distribution`` = the rule predict uses)."""
    rows = pick(metrics, family="ood", metric=metric).dropna(subset=["value"])
    if rows.empty:
        return pd.DataFrame()
    return (rows.pivot_table(index="set", columns="method", values="value", aggfunc="mean")
            .rename_axis(index="set", columns="detector"))


def ood_heatmap(table: pd.DataFrame, title: str, path: Path) -> Path:
    """AUROC heat map on the full 0-1 scale with 0.5 (chance) as the neutral colour, so an
    inverted detector (AUROC < 0.5) stands out instead of looking like chance."""
    fig, ax = _subplots(figsize=(1.1 * table.shape[1] + 2.5, 0.45 * table.shape[0] + 1.5))
    sns.heatmap(table, vmin=0, vmax=1, center=0.5, annot=True, fmt=".2f", cmap="RdBu_r", ax=ax,
                cbar_kws={"label": "AUROC (0.5 = chance, < 0.5 = inverted)"})
    ax.set(title=title, xlabel="detector", ylabel="OOD set")
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


def shift_accuracy(table: pd.DataFrame, path: Path) -> Path:
    """Accuracy by severity, one panel per shift, one line per arm."""
    table = table.assign(arm=[arm(v, s) for v, s in zip(table["variant"], table["setting"],
                                                         strict=True)])
    shifts = sorted(table["shift"].unique())
    fig, axes = _grid(len(shifts), 3, size=3.4)
    for i, (ax, shift) in enumerate(zip(axes, shifts, strict=False)):
        sns.lineplot(table[table["shift"] == shift], x="severity", y="accuracy", hue="arm",
                     marker="o", ax=ax, legend=i == 0)
        ax.set(title=shift, ylim=(0, 1))
        ax.set_xticks(sorted(table["severity"].unique()))
    if shifts:
        axes[0].legend(fontsize="xx-small")
    fig.suptitle("Accuracy under shift (severity 0 = the same crops unshifted)")
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
    fig, ax = _subplots(figsize=(4.5, 4.5))
    sns.scatterplot(pairs, x="random_forest", y="neural", hue="variant", s=40, ax=ax)
    ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="random-forest head macro-F1",
           ylabel="neural head macro-F1", title="Neural vs random-forest head (per fold)")
    ax.legend(fontsize="x-small")
    return save(fig, path)


def grouped_vs_random(table: pd.DataFrame, path: Path) -> Path:
    """Mean ± std over folds of each metric under donor-grouped and random splits."""
    fig, ax = _subplots(figsize=(6, 3.5))
    sns.barplot(table, x="metric", y="value", hue="split", errorbar="sd", ax=ax)
    ax.set(ylim=(0, 1), xlabel="", ylabel="mean over folds (± sd)",
           title="Donor-grouped vs random split")
    return save(fig, path)


# --------------------------------------------------------------------------- images


def _show(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def confident_errors(errors: pd.DataFrame, images: np.ndarray, path: Path) -> Path:
    """Gallery of misclassified crops (highest predicted probability first) with their
    class probabilities; ``images[i]`` is the crop of ``errors.iloc[i]``."""
    fig, axes = _grid(len(errors), 4, size=2.4, height=2.8)
    short = {"Normal_Sperm": "N", "Abnormal_Sperm": "A", "Non-Sperm": "X"}
    for ax, img, (_, r) in zip(axes, images, errors.iterrows(), strict=False):
        probs = " ".join(f"{short.get(c, c)}={r[f'prob_{s}']:.2f}"
                         for c, s in zip(CLASSES, SLUGS, strict=True))
        _show(ax, img, f"true {r['label']}\npred {r['predicted']}\n{probs}")
    fig.suptitle("Most confident errors (N normal, A abnormal, X non-sperm)", fontsize=9)
    return save(fig, path)


def gradcam_grid(images: np.ndarray, cams: np.ndarray, titles: list[str], path: Path,
                 heading: str) -> Path:
    """Each crop next to its Grad-CAM overlay."""
    fig, axes = _subplots(len(images), 2, figsize=(4.4, 2.3 * len(images)), squeeze=False)
    for (a, b), img, cam, title in zip(axes, images, cams, titles, strict=True):
        _show(a, img, title)
        b.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        b.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        b.set_title("Grad-CAM", fontsize=7)
        b.axis("off")
    fig.suptitle(heading, fontsize=9)
    return save(fig, path)
