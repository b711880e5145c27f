"""Split conformal prediction sets calibrated on the inner-validation split.

Scores (non-randomised, so sets are deterministic and coverage is conservative):
- ``lac``: 1 - p_y (least ambiguous set-valued classifier; smallest sets).
- ``aps``: total probability of the classes at least as likely as y (adaptive prediction sets,
  without the random tie-break, so a class is in the set iff its cumulative mass <= qhat).
A class k is in the set iff its score is <= ``qhat_[alpha]``, the ceil((n+1)(1-alpha))-th
smallest of the n validation scores; under exchangeability P(y in set) >= 1 - alpha.
Mondrian (class-conditional) calibration fits one qhat per class on the validation crops of that
class, so P(y in set | y = k) >= 1 - alpha for every class k."""

from __future__ import annotations

import numpy as np

from ..config import EvalConfig
from ..data.classes import SLUGS
from ..metric_names import metric_column
from ..outputs import ModelOutputs
from .base import Scorer


def _lac(probs: np.ndarray) -> np.ndarray:
    return 1.0 - probs


def _aps(probs: np.ndarray) -> np.ndarray:
    # mass of all classes with probability >= p_k (ties counted together)
    return (probs[:, None, :] * (probs[:, None, :] >= probs[:, :, None])).sum(axis=2)


#: name -> function giving the (N, C) score of every candidate class
CONFORMAL_SCORES = {"lac": _lac, "aps": _aps}


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest score; ``inf`` (full sets) when that rank exceeds n."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    k = int(np.ceil((len(scores) + 1) * (1 - alpha) - 1e-9))
    return float(scores[k - 1]) if 1 <= k <= len(scores) else float("inf")


class ConformalPredictor:
    """Fitted on validation probabilities and labels; ``qhat_`` maps alpha -> threshold (a float,
    or with ``mondrian`` an array of one threshold per class, ``inf`` for a class absent from
    validation, which is then always in the set)."""

    def __init__(self, method: str = "lac", alphas: tuple[float, ...] = (0.1, 0.05),
                 mondrian: bool = False):
        if method not in CONFORMAL_SCORES:
            raise ValueError(f"method must be one of {sorted(CONFORMAL_SCORES)}, got {method!r}")
        self.method = method
        self.alphas = tuple(alphas)
        self.mondrian = mondrian

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> ConformalPredictor:
        probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
        true_scores = CONFORMAL_SCORES[self.method](probs)[np.arange(len(labels)), labels]
        if not self.mondrian:
            self.qhat_ = {a: conformal_quantile(true_scores, a) for a in self.alphas}
        else:
            self.qhat_ = {a: np.array([conformal_quantile(true_scores[labels == k], a)
                                       for k in range(probs.shape[1])]) for a in self.alphas}
        return self

    def predict_sets(self, probs: np.ndarray, alpha: float) -> np.ndarray:
        """Boolean (N, C) membership of each class in the prediction set."""
        scores = CONFORMAL_SCORES[self.method](np.asarray(probs, dtype=np.float64))
        return scores <= np.asarray(self.qhat_[alpha]) + 1e-12


def set_metrics(sets: np.ndarray, labels: np.ndarray, groups: np.ndarray | None,
                method: str, alpha: float) -> dict[str, float]:
    """Coverage, mean set size, coverage per class (NaN when absent) and, with ``groups``, the
    worst coverage over groups of conformal ``method`` at ``alpha`` (``cp_<method>_<metric>_a<alpha>``)."""
    def col(metric: str, **parts) -> str:
        return metric_column("conformal", metric, method=method, alpha=alpha, **parts)

    hit = sets[np.arange(len(labels)), labels].astype(np.float64)
    res = {col("coverage"): _mean(hit), col("set_size"): _mean(sets.sum(axis=1))}
    for k, slug in enumerate(SLUGS):
        res[col("coverage", cls=slug)] = _mean(hit[labels == k])
    if groups is not None:
        groups = np.asarray(groups)
        res[col("min_group_coverage")] = min(
            (_mean(hit[groups == g]) for g in np.unique(groups)), default=float("nan"))
    return res


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


class ConformalScorer(Scorer):
    """For every method in ``methods``, alpha in ``alphas``, marginal (``cp_<method>_...``) and
    class-conditional (``cp_<method>_mondrian_...``) calibration on validation: test
    ``coverage``, ``set_size``, ``coverage_<slug>`` per class and ``min_group_coverage`` (when
    test has groups), each suffixed ``_a<alpha>`` (see ``set_metrics``)."""

    def __init__(self, alphas: tuple[float, ...] = (0.1, 0.05), methods=("lac", "aps")):
        self.alphas = tuple(alphas)
        self.methods = tuple(methods)

    @classmethod
    def from_config(cls, config: EvalConfig) -> ConformalScorer:
        return cls(alphas=config.conformal_alphas)

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> ConformalScorer:
        self.predictors_ = {
            f"{m}_mondrian" if mondrian else m:
                ConformalPredictor(m, self.alphas, mondrian).fit(val.probs, val.labels)
            for m in self.methods for mondrian in (False, True)}
        return self

    def score(self, test: ModelOutputs) -> dict[str, float]:
        res = {}
        labels = np.asarray(test.labels)
        for name, cp in self.predictors_.items():
            for a in self.alphas:
                res.update(set_metrics(cp.predict_sets(test.probs, a), labels, test.groups,
                                       name, a))
        return res
