"""Classification metrics on probabilities (scikit-learn). A fold missing a class gives NaN for
that class's recall / AUROC instead of crashing."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm

from ..data.classes import SLUGS
from ..f1 import macro_f1
from ..metric_names import metric_column
from ..outputs import ModelOutputs
from .base import N_CLASSES, Scorer

_LABELS = list(range(N_CLASSES))


def confusion(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class, in ``CLASSES`` order."""
    return skm.confusion_matrix(labels, pred, labels=_LABELS)


def as_probabilities(probs: np.ndarray) -> np.ndarray:
    """``probs`` in float64 with every row renormalised to sum to one: float32 softmaxes and
    their means are off by ~1e-7, which scikit-learn's float64 check (tolerance ~1.5e-8)
    reports as "y_prob values do not sum to one" on every fold."""
    p = np.asarray(probs, dtype=np.float64)
    return p / p.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    return float(skm.log_loss(labels, as_probabilities(probs), labels=_LABELS))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of sum_k (p_k - onehot_k)^2 (range 0..2)."""
    return float(skm.brier_score_loss(labels, as_probabilities(probs), labels=_LABELS,
                                      scale_by_half=False))


def auroc_ovr(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """One-vs-rest AUROC per class (NaN when the class is absent or alone) and their macro mean
    over the classes where it is defined."""
    out = {}
    for k, slug in enumerate(SLUGS):
        positive = labels == k
        out[slug] = (float(skm.roc_auc_score(positive, probs[:, k]))
                     if 0 < positive.sum() < len(labels) else float("nan"))
    values = [v for v in out.values() if not np.isnan(v)]
    out["macro"] = float(np.mean(values)) if values else float("nan")
    return out


def _cls(metric: str, **parts) -> str:
    return metric_column("classification", metric, **parts)


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All ``cls_*`` keys for one set of predicted probabilities (N, C) and true labels (N,)."""
    labels = np.asarray(labels)
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        res = {
            _cls("accuracy"): float(skm.accuracy_score(labels, pred)),
            _cls("balanced_accuracy"): float(skm.balanced_accuracy_score(labels, pred)),
            _cls("macro_f1"): macro_f1(labels, pred, N_CLASSES, absent=np.nan),
        }
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            labels, pred, labels=_LABELS, zero_division=np.nan)
    for k, slug in enumerate(SLUGS):
        res[_cls("precision", cls=slug)] = float(precision[k])
        res[_cls("recall", cls=slug)] = float(recall[k])
        res[_cls("f1", cls=slug)] = float(f1[k])
    auroc = auroc_ovr(probs, labels)
    res[_cls("auroc_ovr")] = auroc.pop("macro")
    res.update({_cls("auroc", cls=slug): v for slug, v in auroc.items()})
    res[_cls("nll")] = nll(probs, labels)
    res[_cls("brier")] = brier(probs, labels)
    cm = confusion(labels, pred)
    res.update({_cls("cm", cls=(t, p)): float(cm[i, j])
                for i, t in enumerate(SLUGS) for j, p in enumerate(SLUGS)})
    return res


class ClassificationScorer(Scorer):
    """``cls_*`` keys of the deterministic pass (no fitting)."""

    def score(self, test: ModelOutputs) -> dict[str, float]:
        return classification_metrics(test.probs, test.labels)
