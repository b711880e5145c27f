"""Macro-F1: the one definition shared by training (early stopping, Optuna) and the reported
``cls_macro_f1``. It sits outside ``train`` and ``evaluate`` so both import it without pulling
in the other's dependencies.

Per class c, F1 = 2·TP / (#predicted c + #true c). The callers differ only for a class that is
neither true nor predicted anywhere (0/0), and ``absent`` keeps each one's numbers:

* ``absent=0.0`` (training): the class counts as F1 = 0, so the mean is always over every class;
* ``absent=nan`` (reported metrics): the class is left out of the mean, as scikit-learn's
  ``f1_score(average="macro", zero_division=np.nan)`` does (NaN when no class is defined).

When every class occurs in the labels or the predictions, both give the same number.
"""

from __future__ import annotations

import numpy as np


def macro_f1(y_true, y_pred, n_classes: int, *, absent: float = 0.0) -> float:
    """Unweighted mean of per-class F1 over classes ``0 .. n_classes-1``; ``absent`` is the F1
    of a class found in neither ``y_true`` nor ``y_pred`` (NaN drops it from the mean)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.arange(n_classes)
    tp = np.array([np.sum((y_pred == c) & (y_true == c)) for c in classes])
    denom = np.array([np.sum(y_pred == c) + np.sum(y_true == c) for c in classes])
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / denom, absent)
    defined = f1[~np.isnan(f1)]
    return float(defined.mean()) if len(defined) else float("nan")
