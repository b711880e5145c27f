"""Split conformal prediction sets calibrated on the inner-validation split.

Scores (non-randomised, so sets are deterministic and coverage is conservative):
- ``lac``: 1 - p_y (least ambiguous set-valued classifier; smallest sets).
- ``aps``: total probability of the classes at least as likely as y (adaptive prediction sets,
  without the random tie-break, so a class is in the set iff its cumulative mass <= qhat).
A class k is in the set iff its score is <= ``qhat_[alpha]``, the ceil((n+1)(1-alpha))-th
smallest of the n validation scores; under exchangeability P(y in set) >= 1 - alpha.
Mondrian (class-conditional) calibration fits one qhat per class on the validation crops of that
class, so P(y in set | y = k) >= 1 - alpha for every class k.

Both guarantees assume crops exchangeable with the validation crops. A held-out fold is new
acquisition groups: crops of one group share their acquisition, so the validation split holds as
many independent units as it holds groups (4-5 on the real copy), and a quantile from so few
units under-covers a new group (held-out class-conditional coverage 0.85 at alpha 0.1 on the
real copy). ``new_groups=True`` ("new-group calibration") raises the rank until the
leave-one-group-out coverage of the validation groups, each group weighted equally, reaches
1 - alpha: coverage on a new acquisition group, estimated by cross-validation over groups (an
estimate, not a finite-sample guarantee; never below the exchangeable rank)."""

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


def new_group_quantile(scores: np.ndarray, groups: np.ndarray, alpha: float) -> float:
    """The score at the lowest rank k >= ceil((n+1)(1-alpha)) whose leave-one-group-out
    coverage, averaged over groups with equal weight, is >= 1 - alpha: each group is covered
    by the quantile at level k/(n+1) of the other groups' scores. The top rank n always
    qualifies (there every left-out quantile is beyond the other groups' scores), so a group
    unlike the others pushes the threshold to the largest score. ``inf`` when the exchangeable
    rank exceeds n; the plain ``conformal_quantile`` with fewer than two groups."""
    scores, groups = np.asarray(scores, dtype=np.float64), np.asarray(groups)
    names = np.unique(groups)
    if len(names) < 2:
        return conformal_quantile(scores, alpha)
    n, ordered = len(scores), np.sort(scores)
    held = [(scores[groups == g], scores[groups != g]) for g in names]

    def covered(k: int) -> bool:
        level = 1 - k / (n + 1)
        return np.mean([np.mean(own <= conformal_quantile(rest, level) + 1e-12)
                        for own, rest in held]) >= 1 - alpha

    low = int(np.ceil((n + 1) * (1 - alpha) - 1e-9))
    if low > n:
        return float("inf")
    high = n  # coverage only grows with k: bisect for the lowest rank that covers
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if covered(mid) else (mid + 1, high)
    return float(ordered[low - 1])


class ConformalPredictor:
    """Fitted on validation probabilities and labels; ``qhat_`` maps alpha -> threshold (a float,
    or with ``mondrian`` an array of one threshold per class, ``inf`` for a class absent from
    validation, which is then always in the set). ``new_groups``: the rank is calibrated for
    new acquisition groups (``new_group_quantile``; ``fit`` then needs the crops' groups)."""

    def __init__(self, method: str = "lac", alphas: tuple[float, ...] = (0.1, 0.05),
                 mondrian: bool = False, new_groups: bool = False):
        if method not in CONFORMAL_SCORES:
            raise ValueError(f"method must be one of {sorted(CONFORMAL_SCORES)}, got {method!r}")
        self.method = method
        self.alphas = tuple(alphas)
        self.mondrian = mondrian
        self.new_groups = new_groups

    def fit(self, probs: np.ndarray, labels: np.ndarray,
            groups: np.ndarray | None = None) -> ConformalPredictor:
        probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
        true_scores = CONFORMAL_SCORES[self.method](probs)[np.arange(len(labels)), labels]
        if self.new_groups:
            if groups is None:
                raise ValueError("new-group calibration needs the validation crops' groups")
            groups = np.asarray(groups)
            quantile = lambda keep, a: new_group_quantile(true_scores[keep], groups[keep], a)  # noqa: E731
        else:
            quantile = lambda keep, a: conformal_quantile(true_scores[keep], a)  # noqa: E731
        if not self.mondrian:
            everything = np.ones(len(labels), dtype=bool)
            self.qhat_ = {a: quantile(everything, a) for a in self.alphas}
        else:
            self.qhat_ = {a: np.array([quantile(labels == k, a) for k in range(probs.shape[1])])
                          for a in self.alphas}
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


#: calibrations every fold reports: name -> (score, class-conditional, new-group rank); the
#: new-group rule for LAC only (the set ``predict`` gives is class-conditional LAC)
CALIBRATIONS = {"lac": ("lac", False, False), "lac_mondrian": ("lac", True, False),
                "aps": ("aps", False, False), "aps_mondrian": ("aps", True, False),
                "lac_newgroups": ("lac", False, True),
                "lac_mondrian_newgroups": ("lac", True, True)}


class ConformalScorer(Scorer):
    """For every calibration in ``CALIBRATIONS`` (``cp_<name>_...``; the new-group ones only
    when validation has groups) and alpha in ``alphas``, fitted on validation: test
    ``coverage``, ``set_size``, ``coverage_<slug>`` per class and ``min_group_coverage`` (when
    test has groups), each suffixed ``_a<alpha>`` (see ``set_metrics``)."""

    def __init__(self, alphas: tuple[float, ...] = (0.1, 0.05), calibrations=tuple(CALIBRATIONS)):
        self.alphas = tuple(alphas)
        self.calibrations = tuple(calibrations)

    @classmethod
    def from_config(cls, config: EvalConfig) -> ConformalScorer:
        return cls(alphas=config.conformal_alphas)

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> ConformalScorer:
        self.predictors_ = {}
        for name in self.calibrations:
            method, mondrian, new_groups = CALIBRATIONS[name]
            if new_groups and val.groups is None:
                continue
            self.predictors_[name] = ConformalPredictor(method, self.alphas, mondrian, new_groups)\
                .fit(val.probs, val.labels, val.groups)
        return self

    def score(self, test: ModelOutputs) -> dict[str, float]:
        res = {}
        labels = np.asarray(test.labels)
        for name, cp in self.predictors_.items():
            for a in self.alphas:
                res.update(set_metrics(cp.predict_sets(test.probs, a), labels, test.groups,
                                       name, a))
        return res
