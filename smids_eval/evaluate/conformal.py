"""Split conformal prediction sets calibrated on the inner-validation split.

Scores (non-randomised, so sets are deterministic and coverage is conservative):
- ``lac``: 1 - p_y (least ambiguous set-valued classifier; smallest sets).
- ``aps``: total probability of the classes at least as likely as y (adaptive prediction sets,
  without the random tie-break, so a class is in the set iff its cumulative mass <= qhat).
A class k is in the set iff its score would be <= ``qhat_[alpha]``, the
ceil((n+1)(1-alpha))/n empirical quantile of the validation scores; under exchangeability
P(y in set) >= 1 - alpha."""

from __future__ import annotations

import numpy as np

from ..config import EvalConfig
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
    """Finite-sample-corrected quantile; ``inf`` (full sets) when n is too small for alpha."""
    n = len(scores)
    level = np.ceil((n + 1) * (1 - alpha)) / n
    if level > 1:
        return float("inf")
    return float(np.quantile(scores, level, method="higher"))


def alpha_tag(alpha: float) -> str:
    return f"a{alpha:g}"


class ConformalPredictor:
    """Fitted on validation probabilities and labels; ``qhat_`` maps alpha -> threshold."""

    def __init__(self, method: str = "lac", alphas: tuple[float, ...] = (0.1, 0.05)):
        if method not in CONFORMAL_SCORES:
            raise ValueError(f"method must be one of {sorted(CONFORMAL_SCORES)}, got {method!r}")
        self.method = method
        self.alphas = tuple(alphas)

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> ConformalPredictor:
        scores = CONFORMAL_SCORES[self.method](np.asarray(probs, dtype=np.float64))
        true_scores = scores[np.arange(len(labels)), np.asarray(labels)]
        self.qhat_ = {a: conformal_quantile(true_scores, a) for a in self.alphas}
        return self

    def predict_sets(self, probs: np.ndarray, alpha: float) -> np.ndarray:
        """Boolean (N, C) membership of each class in the prediction set."""
        scores = CONFORMAL_SCORES[self.method](np.asarray(probs, dtype=np.float64))
        return scores <= self.qhat_[alpha] + 1e-12


class ConformalScorer(Scorer):
    """``cp_<method>_coverage_a<alpha>`` and ``cp_<method>_set_size_a<alpha>`` on test for every
    method in ``methods`` and alpha in ``alphas``."""

    def __init__(self, alphas: tuple[float, ...] = (0.1, 0.05), methods=("lac", "aps")):
        self.alphas = tuple(alphas)
        self.methods = tuple(methods)

    @classmethod
    def from_config(cls, config: EvalConfig) -> ConformalScorer:
        return cls(alphas=config.conformal_alphas)

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> ConformalScorer:
        self.predictors_ = {m: ConformalPredictor(m, self.alphas).fit(val.probs, val.labels)
                            for m in self.methods}
        return self

    def score(self, test: ModelOutputs) -> dict[str, float]:
        res = {}
        probs, labels = test.probs, np.asarray(test.labels)
        for m, cp in self.predictors_.items():
            for a in self.alphas:
                sets = cp.predict_sets(probs, a)
                res[f"cp_{m}_coverage_{alpha_tag(a)}"] = float(sets[np.arange(len(labels)),
                                                                    labels].mean())
                res[f"cp_{m}_set_size_{alpha_tag(a)}"] = float(sets.sum(axis=1).mean())
        return res
