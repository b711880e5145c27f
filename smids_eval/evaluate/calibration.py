"""Calibration errors (netcal ECE / MCE, adaptive equal-mass ACE) before and after temperature
scaling, and a reliability diagram drawn with matplotlib.

Temperature fitting path: netcal ``TemperatureScaling(method='mle', detection=False,
use_cuda=False)`` fitted on float64 softmax probabilities of the inner-validation split (netcal
re-takes their log, so the learned weight w multiplies the logits and T = 1 / w). The fit is
accepted only if it is finite, positive and does not raise validation NLL above T = 1; otherwise
(the reported netcal case where the fit stays at T = 1 or degenerates) T is refitted by minimising
validation NLL with ``scipy.optimize.minimize_scalar`` over log T. ``method_`` says which path ran.
"""

from __future__ import annotations

import warnings

import numpy as np
from netcal.metrics import ACE, ECE, MCE
from netcal.scaling import TemperatureScaling
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from ..metric_names import metric_column
from ..outputs import ModelOutputs, softmax
from .base import Scorer

BINS = 15


def calibration_errors(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, float]:
    """Top-label ECE, MCE, ACE (netcal, equal-width bins; the ACE as ``ace_equal_width``) and
    ``ace`` over adaptive equal-mass bins (``adaptive_ce``). netcal gets the top-label confidence
    and correctness (its binary form), so a set lacking a class is measured like any other."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"ece": float(ECE(bins).measure(conf, correct)),
                "mce": float(MCE(bins).measure(conf, correct)),
                "ace": adaptive_ce(conf, correct, bins),
                "ace_equal_width": float(ACE(bins).measure(conf, correct))}


def adaptive_ce(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Calibration error over equal-mass bins: crops ranked by confidence fill ``bins`` bins of
    equal size (tied confidences share the bin of their lowest rank), and |accuracy - mean
    confidence| is averaged over bins weighted by size. (netcal's quantile bins fail on ties.)"""
    confidence = np.asarray(confidence, dtype=np.float64)
    n = len(confidence)
    if n == 0:
        return float("nan")
    rank = np.searchsorted(np.sort(confidence), confidence, side="left")
    idx = rank * bins // n
    gap = np.bincount(idx, weights=np.asarray(correct, dtype=np.float64) - confidence)
    return float(np.abs(gap).sum() / n)


def _nll_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(labels)), labels].mean())


class TemperatureScaler:
    """Single temperature T for logits, fitted on validation logits/labels. ``temperature_`` is
    what predict.py applies: ``softmax(logits / temperature_)``."""

    def __init__(self, t_bounds: tuple[float, float] = (0.05, 20.0)):
        self.t_bounds = t_bounds

    def fit(self, logits: np.ndarray, labels: np.ndarray) -> TemperatureScaler:
        logits = np.asarray(logits, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        t, self.method_ = self._fit_netcal(logits, labels), "netcal-mle"
        lo, hi = self.t_bounds
        if not (np.isfinite(t) and lo <= t <= hi
                and _nll_at(logits, labels, t) <= _nll_at(logits, labels, 1.0) + 1e-9):
            res = minimize_scalar(lambda s: _nll_at(logits, labels, np.exp(s)),
                                  bounds=(np.log(lo), np.log(hi)), method="bounded")
            t, self.method_ = float(np.exp(res.x)), "scipy-nll"
        self.temperature_ = float(t)
        return self

    @staticmethod
    def _fit_netcal(logits: np.ndarray, labels: np.ndarray) -> float:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ts = TemperatureScaling(method="mle", detection=False, use_cuda=False)
                ts.fit(softmax(logits), labels)
                weight = float(np.asarray(ts.temperature).ravel()[0])
        except Exception:  # noqa: BLE001 - any netcal failure falls back to the scipy path
            return float("nan")
        return 1.0 / weight if weight > 0 else float("nan")

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, C)."""
        return softmax(np.asarray(logits, dtype=np.float64) / self.temperature_)


class CalibrationScorer(Scorer):
    """``cal_ece/mce/ace/ace_equal_width`` of the raw softmax, ``cal_*_ts`` after temperature scaling fitted on
    the inner-validation split, and ``cal_temperature``."""

    def __init__(self, bins: int = BINS):
        self.bins = bins

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> CalibrationScorer:
        self.scaler_ = TemperatureScaler().fit(val.logits, val.labels)
        return self

    def score(self, test: ModelOutputs) -> dict[str, float]:
        raw = calibration_errors(test.probs, test.labels, self.bins)
        ts = calibration_errors(self.scaler_.transform(test.logits), test.labels, self.bins)
        res = {metric_column("calibration", k): v for k, v in raw.items()}
        res.update({metric_column("calibration", f"{k}_ts"): v for k, v in ts.items()})
        res[metric_column("calibration", "temperature")] = self.scaler_.temperature_
        return res


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = BINS):
    """Per equal-width confidence bin: (bin centres, accuracy, mean confidence, count)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    idx = np.clip((conf * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
    centres = (np.arange(bins) + 0.5) / bins
    return centres, acc, mean_conf, count


def plot_reliability(probs: np.ndarray, labels: np.ndarray, ax, title: str = "",
                     bins: int = BINS):
    """Reliability diagram (accuracy per confidence bin vs the diagonal) on a matplotlib axis,
    with the ECE in the legend. Returns ``ax``. Callers choose the backend (Agg in scripts)."""
    centres, acc, _, count = reliability_bins(probs, labels, bins)
    ece = calibration_errors(probs, labels, bins)["ece"]
    width = 1.0 / bins
    filled = count > 0
    ax.bar(centres[filled], acc[filled], width=width * 0.95, color="#4c72b0",
           edgecolor="white", label=f"accuracy (ECE {ece:.3f})")
    ax.bar(centres[filled], centres[filled] - acc[filled], bottom=acc[filled], width=width * 0.95,
           color="#dd8452", alpha=0.45, label="gap to confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)",
           ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize="small")
    return ax
