"""Data report: counts per class, image-size distribution, exact duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import CLASSES


def size_table(dataset) -> pd.DataFrame:
    """Per class: count and min/median/mean/max of original width and height."""
    frame = pd.DataFrame({
        "class": [CLASSES[i] for i in dataset.labels],
        "width": dataset.original_sizes[:, 0],
        "height": dataset.original_sizes[:, 1],
    })
    stats = frame.groupby("class").agg(
        images=("width", "size"),
        width_min=("width", "min"), width_median=("width", "median"),
        width_max=("width", "max"), height_min=("height", "min"),
        height_median=("height", "median"), height_max=("height", "max"),
    )
    return stats.reindex([c for c in CLASSES if c in stats.index])


def render_report(dataset) -> str:
    """Plain-text report for the terminal (also used in the study's report.md)."""
    lines = [f"data: {dataset.source.describe()}", f"fingerprint: {dataset.fingerprint}",
             f"images: {len(dataset)}", "", "images per class:"]
    for name, n in dataset.class_counts().items():
        lines.append(f"  {name:<15} {n:>6}  ({n / max(len(dataset), 1):.1%})")
    w, h = dataset.original_sizes[:, 0], dataset.original_sizes[:, 1]
    lines += ["", f"image sizes (px): width {w.min()}–{w.max()} (mean {w.mean():.0f}), height {h.min()}–{h.max()} (mean {h.mean():.0f})", "",
        size_table(dataset).to_string(), ""]
    edges = np.histogram_bin_edges(np.concatenate([w, h]), bins=8)
    counts, _ = np.histogram(np.maximum(w, h), bins=edges)
    lines.append("longer side histogram:")
    for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True):
        lines.append(f"  {lo:6.0f}–{hi:<6.0f} {n:>6} {'#' * int(40 * n / max(counts.max(), 1))}")
    lines.append("")
    if dataset.duplicates:
        lines.append(f"exact duplicates (byte-identical files): {len(dataset.duplicates)} groups")
        lines += ["  " + " = ".join(group) for group in dataset.duplicates]
    else:
        lines.append("exact duplicates (byte-identical files): none")
    return "\n".join(lines)
