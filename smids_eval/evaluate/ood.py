"""Out-of-distribution detectors (OpenOOD-style postprocessors) and their metrics.

Every detector: ``fit(train, val) -> self``, ``score(outputs) -> (N,)`` with HIGHER = MORE
IN-DISTRIBUTION (OpenOOD convention), and ``threshold_``: the validation score quantile that
keeps ``keep`` (95%) of validation images; ``is_in_distribution(outputs)`` applies it.
Metrics treat in-distribution as the positive class."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.neighbors import NearestNeighbors

from ..outputs import ModelOutputs
from .mc_dropout import mutual_information, predictive_entropy


class Detector:
    requires_mc = False
    requires_train = False

    def __init__(self, keep: float = 0.95):
        self.keep = keep

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> Detector:
        if self.requires_train and train is None:
            raise ValueError(f"{type(self).__name__} needs training outputs")
        self._fit(train, val)
        self.threshold_ = float(np.quantile(self.score(val), 1.0 - self.keep, method="lower"))
        return self

    def _fit(self, train: ModelOutputs | None, val: ModelOutputs) -> None:
        pass

    def score(self, outputs: ModelOutputs) -> np.ndarray:
        """Per-image score, higher = more in-distribution."""
        raise NotImplementedError

    def is_in_distribution(self, outputs: ModelOutputs) -> np.ndarray:
        return self.score(outputs) >= self.threshold_


class MSP(Detector):
    """Maximum softmax probability (Hendrycks & Gimpel 2017)."""

    def score(self, outputs):
        return outputs.probs.max(axis=1)


class MaxLogit(Detector):
    """Maximum logit (Hendrycks et al. 2022)."""

    def score(self, outputs):
        return np.asarray(outputs.logits, dtype=np.float64).max(axis=1)


class Energy(Detector):
    """Negative free energy, logsumexp of the logits (Liu et al. 2020)."""

    def score(self, outputs):
        return logsumexp(np.asarray(outputs.logits, dtype=np.float64), axis=1)


class Entropy(Detector):
    """Negative predictive entropy of the deterministic softmax."""

    def score(self, outputs):
        return -predictive_entropy(outputs.probs)


class MCMutualInfo(Detector):
    """Negative MC-dropout mutual information (needs ``mc_probs``)."""

    requires_mc = True

    def score(self, outputs):
        if outputs.mc_probs is None:
            raise ValueError("MCMutualInfo needs mc_probs")
        return -mutual_information(outputs.mc_probs)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Mahalanobis(Detector):
    """Negative minimum Mahalanobis distance of the penultimate features to the class means,
    shared Ledoit-Wolf covariance fitted on the training part (Lee et al. 2018)."""

    requires_train = True

    def _fit(self, train, val):
        x = np.asarray(train.features, dtype=np.float64)
        labels = np.asarray(train.labels)
        classes = np.unique(labels)
        self.means_ = np.stack([x[labels == k].mean(axis=0) for k in classes])
        centred = x - self.means_[np.searchsorted(classes, labels)]
        self.precision_ = LedoitWolf(assume_centered=True).fit(centred).precision_

    def score(self, outputs):
        x = np.asarray(outputs.features, dtype=np.float64)
        d = x[:, None, :] - self.means_[None]
        dist = np.einsum("nkd,nkd->nk", d @ self.precision_, d)
        return -dist.min(axis=1)


class KNN(Detector):
    """Negative distance to the k-th nearest training feature after L2 normalisation
    (Sun et al. 2022)."""

    requires_train = True

    def __init__(self, keep: float = 0.95, k: int = 10):
        super().__init__(keep)
        self.k = k

    def _fit(self, train, val):
        bank = _l2_normalise(train.features)
        self.k_ = min(self.k, len(bank))
        self.index_ = NearestNeighbors(n_neighbors=self.k_).fit(bank)

    def score(self, outputs):
        dist, _ = self.index_.kneighbors(_l2_normalise(outputs.features))
        return -dist[:, -1].astype(np.float64)


#: name -> detector class; a new detector is one small class plus one line here
DETECTORS: dict[str, type[Detector]] = {
    "msp": MSP, "maxlogit": MaxLogit, "energy": Energy, "entropy": Entropy,
    "mc_mi": MCMutualInfo, "mahalanobis": Mahalanobis, "knn": KNN,
}


def ood_metrics(score_in: np.ndarray, score_out: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR at 95% TPR; in-distribution = positive, higher score =
    more in-distribution. FPR95: fraction of OOD images accepted by the threshold that keeps
    95% of in-distribution images."""
    y = np.r_[np.ones(len(score_in)), np.zeros(len(score_out))]
    s = np.r_[score_in, score_out].astype(np.float64)
    fpr, tpr, _ = roc_curve(y, s)
    return {"auroc": float(roc_auc_score(y, s)),
            "aupr_in": float(average_precision_score(y, s)),
            "aupr_out": float(average_precision_score(1 - y, -s)),
            "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")])}


def applicable(name: str, train: ModelOutputs | None, val: ModelOutputs) -> bool:
    cls = DETECTORS[name]
    return not ((cls.requires_mc and val.mc_probs is None)
                or (cls.requires_train and train is None))


class OODScorer:
    """Fits every applicable detector; ``score_sets`` returns
    ``ood_<set>_<detector>_{auroc,aupr_in,aupr_out,fpr95}`` against the held-out test fold.
    MC detectors are skipped when validation or an OOD set has no ``mc_probs``."""

    def __init__(self, detectors: tuple[str, ...] | None = None):
        self.detectors = detectors

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> OODScorer:
        names = self.detectors or tuple(DETECTORS)
        self.detectors_ = {n: DETECTORS[n]().fit(train, val)
                           for n in names if applicable(n, train, val)}
        return self

    def score_sets(self, test: ModelOutputs, ood_sets: dict[str, ModelOutputs]) -> dict[str, float]:
        res = {}
        for name, det in self.detectors_.items():
            if det.requires_mc and test.mc_probs is None:
                continue
            s_in = det.score(test)
            for set_name, ood in ood_sets.items():
                if det.requires_mc and ood.mc_probs is None:
                    continue
                for k, v in ood_metrics(s_in, det.score(ood)).items():
                    res[f"ood_{set_name}_{name}_{k}"] = v
        return res
