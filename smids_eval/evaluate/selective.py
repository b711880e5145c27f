"""Selective classification: risk-coverage curves, AURC, and the confidence threshold at which
the error rate among accepted crops stays <= ``risk_target`` (the rest go to the embryologist),
chosen on validation with a Learn-then-Test guarantee (``risk_controlling_threshold``).

Confidence scores (higher = more confident), registry ``CONFIDENCE_SCORES``: ``msp`` (max
softmax), ``mc_msp`` (max of the MC mean), ``neg_entropy`` (-entropy of the softmax),
``neg_mi`` (-MC mutual information). The MC ones are skipped when ``mc_probs`` is None."""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

from ..config import EvalConfig
from ..metric_names import metric_column
from ..outputs import ModelOutputs
from .base import Scorer
from .mc_dropout import mutual_information, predictive_entropy, predictive_mean

CONFIDENCE_SCORES = {
    "msp": lambda o: o.probs.max(axis=1),
    "mc_msp": lambda o: predictive_mean(o.mc_probs).max(axis=1),
    "neg_entropy": lambda o: -predictive_entropy(o.probs),
    "neg_mi": lambda o: -mutual_information(o.mc_probs),
}
_NEEDS_MC = {"mc_msp", "neg_mi"}


def available_scores(outputs: ModelOutputs) -> list[str]:
    return [s for s in CONFIDENCE_SCORES if outputs.mc_probs is not None or s not in _NEEDS_MC]


def _counts(confidence, correct):
    """(n accepted, n errors among them, threshold) at each distinct confidence value, highest
    first; tied scores are accepted or referred together."""
    confidence = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    conf, err = confidence[order], 1.0 - np.asarray(correct, dtype=np.float64)[order]
    last_of_tie = np.r_[conf[1:] != conf[:-1], True] if len(conf) else np.zeros(0, bool)
    return np.arange(1, len(conf) + 1)[last_of_tie], np.cumsum(err)[last_of_tie], conf[last_of_tie]


def _curve(confidence, correct):
    """(coverage, risk, threshold) at each distinct confidence value, highest first."""
    n_acc, n_err, thr = _counts(confidence, correct)
    return n_acc / max(len(confidence), 1), n_err / n_acc, thr


def risk_coverage_curve(confidence: np.ndarray, correct: np.ndarray):
    """Coverage (fraction accepted) and risk (error rate among accepted) when accepting the
    most confident crops first; one point per distinct confidence value."""
    coverage, risk, _ = _curve(confidence, correct)
    return coverage, risk


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve (step integral; lower is better; equals the mean of
    the selective risk over all N acceptance levels when there are no ties)."""
    coverage, risk, _ = _curve(confidence, correct)
    return float(np.sum(risk * np.diff(np.r_[0.0, coverage])))


def coverage_at_risk(confidence: np.ndarray, correct: np.ndarray, risk_target: float = 0.05):
    """Largest coverage whose selective risk is <= ``risk_target``, and the confidence
    threshold achieving it (accept ``confidence >= threshold``). ``(0.0, inf)`` when none."""
    coverage, risk, thr = _curve(confidence, correct)
    ok = np.flatnonzero(risk <= risk_target)
    if len(ok) == 0:
        return 0.0, float("inf")
    return float(coverage[ok[-1]]), float(thr[ok[-1]])


def risk_upper_bound(n_accepted, n_errors, delta: float = 0.1) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound on the risk at confidence 1 - delta (1 when all
    accepted crops are errors)."""
    n, k = np.asarray(n_accepted, dtype=np.float64), np.asarray(n_errors, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ucb = beta.ppf(1 - delta, k + 1, np.maximum(n - k, 1e-300))
    return np.where(k < n, ucb, 1.0)


def risk_controlling_threshold(confidence: np.ndarray, correct: np.ndarray,
                               risk_target: float = 0.05, delta: float = 0.1):
    """Learn-then-Test fixed-sequence test: scan thresholds from the most confident down, stop
    at the first whose Clopper-Pearson upper risk bound exceeds ``risk_target``; returns
    (validation coverage, threshold) of the lowest passing one, ``(0.0, inf)`` if none. With
    probability >= 1 - delta the risk of ``confidence >= threshold`` is <= risk_target.

    The scan starts at the first threshold accepting enough crops that zero errors would pass
    (fewer can never pass, whatever the labels): the start depends on the confidences only."""
    n_acc, n_err, thr = _counts(confidence, correct)
    testable = np.flatnonzero(risk_upper_bound(n_acc, 0, delta) <= risk_target)
    if len(testable) == 0:
        return 0.0, float("inf")
    start = testable[0]
    passing = risk_upper_bound(n_acc[start:], n_err[start:], delta) <= risk_target
    n_pass = len(passing) if passing.all() else int(np.argmin(passing))
    if n_pass == 0:
        return 0.0, float("inf")
    last = start + n_pass - 1
    return float(n_acc[last] / len(confidence)), float(thr[last])


def pct_tag(risk_target: float) -> str:
    return f"{risk_target * 100:g}pct"


class SelectiveScorer(Scorer):
    """``fit`` picks, on validation, the risk-controlling threshold of each confidence score
    (``thresholds_``, see ``risk_controlling_threshold``); ``score`` reports per score
    ``sel_aurc_<s>``, the test-label-chosen ``sel_oracle_coverage_at_<p>_risk_<s>`` and, for the
    validation threshold on test, ``sel_val_thr_coverage_<s>``, ``sel_val_thr_risk_<s>`` (NaN
    when nothing is accepted) and ``sel_val_thr_accepted_<s>`` (count)."""

    def __init__(self, risk_target: float = 0.05, delta: float = 0.1):
        self.risk_target = risk_target
        self.delta = delta

    @classmethod
    def from_config(cls, config: EvalConfig) -> SelectiveScorer:
        return cls(risk_target=config.risk_target, delta=config.risk_delta)

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> SelectiveScorer:
        correct = val.probs.argmax(1) == val.labels
        self.thresholds_ = {s: risk_controlling_threshold(CONFIDENCE_SCORES[s](val), correct,
                                                          self.risk_target, self.delta)[1]
                            for s in available_scores(val)}
        return self

    def score(self, test: ModelOutputs) -> dict[str, float]:
        correct = test.probs.argmax(1) == test.labels
        tag = pct_tag(self.risk_target)
        res = {}
        for s in available_scores(test):
            conf = CONFIDENCE_SCORES[s](test)
            res[metric_column("selective", "aurc", method=s)] = aurc(conf, correct)
            res[metric_column("selective", f"oracle_coverage_at_{tag}_risk", method=s)] = coverage_at_risk(
                conf, correct, self.risk_target)[0]
            if s in self.thresholds_:
                res.update(self._at_threshold(s, conf >= self.thresholds_[s], correct))
        return res

    @staticmethod
    def _at_threshold(s: str, accepted: np.ndarray, correct: np.ndarray) -> dict[str, float]:
        risk = float(1 - correct[accepted].mean()) if accepted.any() else float("nan")
        return {metric_column("selective", "val_thr_coverage", method=s): float(accepted.mean()),
                metric_column("selective", "val_thr_risk", method=s): risk,
                metric_column("selective", "val_thr_accepted", method=s): float(accepted.sum())}
