"""Selective classification: risk-coverage curves, AURC, and the coverage / threshold at which
the error rate among accepted crops stays <= ``risk_target`` (the rest go to the embryologist).

Confidence scores (higher = more confident), registry ``CONFIDENCE_SCORES``: ``msp`` (max
softmax), ``mc_msp`` (max of the MC mean), ``neg_entropy`` (-entropy of the softmax),
``neg_mi`` (-MC mutual information). The MC ones are skipped when ``mc_probs`` is None."""

from __future__ import annotations

import numpy as np

from ..config import EvalConfig
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


def _curve(confidence, correct):
    """(coverage, risk, threshold) at each distinct confidence value, highest first; tied
    scores are accepted or referred together."""
    confidence = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    conf, err = confidence[order], 1.0 - np.asarray(correct, dtype=np.float64)[order]
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]
    n_acc = np.arange(1, len(conf) + 1)[last_of_tie]
    risk = np.cumsum(err)[last_of_tie] / n_acc
    return n_acc / len(conf), risk, conf[last_of_tie]


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


def pct_tag(risk_target: float) -> str:
    return f"{risk_target * 100:g}pct"


class SelectiveScorer(Scorer):
    """``fit`` picks, on validation, the threshold of each confidence score reaching
    ``risk_target`` (``thresholds_``); ``score`` reports per score ``sel_aurc_<s>``, the oracle
    ``sel_coverage_at_<p>_risk_<s>`` on test, and the coverage / risk achieved on test by the
    validation threshold (``sel_val_thr_coverage_<s>``, ``sel_val_thr_risk_<s>``)."""

    def __init__(self, risk_target: float = 0.05):
        self.risk_target = risk_target

    @classmethod
    def from_config(cls, config: EvalConfig) -> SelectiveScorer:
        return cls(risk_target=config.risk_target)

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> SelectiveScorer:
        correct = val.probs.argmax(1) == val.labels
        self.thresholds_ = {s: coverage_at_risk(CONFIDENCE_SCORES[s](val), correct,
                                                self.risk_target)[1]
                            for s in available_scores(val)}
        return self

    def score(self, test: ModelOutputs) -> dict[str, float]:
        correct = test.probs.argmax(1) == test.labels
        tag = pct_tag(self.risk_target)
        res = {}
        for s in available_scores(test):
            conf = CONFIDENCE_SCORES[s](test)
            res[f"sel_aurc_{s}"] = aurc(conf, correct)
            res[f"sel_coverage_at_{tag}_risk_{s}"] = coverage_at_risk(conf, correct,
                                                                     self.risk_target)[0]
            if s in self.thresholds_:
                accepted = conf >= self.thresholds_[s]
                res[f"sel_val_thr_coverage_{s}"] = float(accepted.mean())
                res[f"sel_val_thr_risk_{s}"] = (float(1 - correct[accepted].mean())
                                                if accepted.any() else float("nan"))
        return res
