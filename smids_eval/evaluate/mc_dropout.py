"""MC-dropout uncertainty from ``mc_probs`` (T, N, C).

Convention when ``mc_probs`` is None: only ``mc_available = 0`` is returned and every other
``mc_*`` key is ABSENT (no fake MC numbers; a CSV built from many folds shows them as empty)."""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy as _entropy

from ..metric_names import metric_column
from ..outputs import ModelOutputs
from .base import Scorer
from .calibration import calibration_errors
from .metrics import nll


def predictive_mean(mc_probs: np.ndarray) -> np.ndarray:
    """Mean probability over the T passes, (N, C), in float64 with rows summing to one (the
    passes are float32 softmaxes)."""
    mean = np.asarray(mc_probs, dtype=np.float64).mean(axis=0)
    return mean / mean.sum(axis=1, keepdims=True)


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each probability row, (N,)."""
    return _entropy(np.asarray(probs, dtype=np.float64), axis=-1)


def mutual_information(mc_probs: np.ndarray) -> np.ndarray:
    """Epistemic part (BALD): H(mean_t p_t) - mean_t H(p_t), (N,); 0 when all passes agree."""
    total = predictive_entropy(predictive_mean(mc_probs))
    aleatoric = predictive_entropy(mc_probs).mean(axis=0)
    return np.maximum(total - aleatoric, 0.0)


def per_class_std(mc_probs: np.ndarray) -> np.ndarray:
    """Std of each class probability over the T passes, (N, C)."""
    return np.asarray(mc_probs, dtype=np.float64).std(axis=0)


def _mc(metric: str) -> str:
    return metric_column("mc_dropout", metric)


class MCDropoutScorer(Scorer):
    """``mc_available``; with MC samples also ``mc_mi_mean``, ``mc_entropy_mean``,
    ``mc_std_mean``, ``mc_accuracy``, ``mc_nll``, ``mc_ece`` of the MC mean and the
    ``*_delta`` (MC mean minus deterministic pass) of accuracy, NLL and ECE."""

    def score(self, test: ModelOutputs) -> dict[str, float]:
        if test.mc_probs is None:
            return {_mc("available"): 0.0}
        mean = predictive_mean(test.mc_probs)
        labels = test.labels
        mc = {"accuracy": float((mean.argmax(1) == labels).mean()), "nll": nll(mean, labels),
              "ece": calibration_errors(mean, labels)["ece"]}
        det_probs = test.probs
        det = {"accuracy": float((det_probs.argmax(1) == labels).mean()),
               "nll": nll(det_probs, labels), "ece": calibration_errors(det_probs, labels)["ece"]}
        res = {_mc("available"): 1.0,
               _mc("mi_mean"): float(mutual_information(test.mc_probs).mean()),
               _mc("entropy_mean"): float(predictive_entropy(mean).mean()),
               _mc("std_mean"): float(per_class_std(test.mc_probs).mean())}
        for k in mc:
            res[_mc(k)] = mc[k]
            res[_mc(f"{k}_delta")] = mc[k] - det[k]
        return res
