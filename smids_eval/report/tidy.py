"""Queries on ``RUN/metrics.csv.gz`` (one row per fold × metric, see ``smids_eval.metric_names``):
the report selects metrics by their parts, never by parsing a column name."""

from __future__ import annotations

from collections.abc import Collection

import pandas as pd

from ..evaluate.shifts import SEVERITIES, SHIFTS
from ..metric_names import HELD_OUT, shift_set


def pick(metrics: pd.DataFrame, **parts) -> pd.DataFrame:
    """Rows whose columns equal the given values (a collection matches any of its members):
    ``pick(m, family="ood", metric="auroc", variant="F.1")``."""
    if metrics.empty:
        return metrics
    keep = pd.Series(True, index=metrics.index)
    for name, value in parts.items():
        if name not in metrics:
            return metrics.iloc[:0]
        wanted = (value if isinstance(value, Collection) and not isinstance(value, str)
                  else [value])
        keep &= metrics[name].astype(str).isin([str(v) for v in wanted])
    return metrics[keep]


def shift_sets(severities=SEVERITIES) -> dict[str, tuple[str, int]]:
    """Set name of every synthetic shift and severity -> (shift, severity), built forward."""
    return {shift_set(n, s): (n, s) for n in SHIFTS for s in severities}


def ood_tier(name: str) -> str:
    """The report's OOD evaluation tier of an OOD set (``fold.FoldRunner._evaluate``)."""
    if name in (HELD_OUT, "heldout"):
        return "new acquisition groups"
    if name.startswith("lab_") or name == "user":
        return "foreign lab"
    if name in ("textures", "natural"):
        return "far OOD (sanity)"
    return "synthetic acquisition shift"
