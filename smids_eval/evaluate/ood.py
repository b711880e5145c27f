"""Out-of-distribution detectors (OpenOOD-style postprocessors) and their metrics.

Every detector: ``fit(train, val) -> self``, ``score(outputs) -> (N,)`` with HIGHER = MORE
IN-DISTRIBUTION (OpenOOD convention), and ``threshold_``: the score that keeps ``keep`` (95%)
of a new acquisition group's images (``new_group_threshold`` on validation; acquisition
detectors: a quantile of leave-one-group-out scores); ``is_in_distribution(outputs)`` applies it.
Metrics treat in-distribution as the positive class.

Two levels (``Detector.level``): ``semantic`` detectors read the classifier's outputs (softmax,
logits, penultimate features) and catch images unlike any class; ``acquisition`` detectors read
``ModelOutputs.descriptors`` (image statistics, early-block moments) and catch another lab,
microscope or stain even when the classifier is confidently fooled. ``InDistribution`` is the
rule ``predict`` and the report use: in-distribution only if both its acquisition and its
semantic detector keep the image."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from contextlib import contextmanager
from typing import ClassVar

import numpy as np
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf
from sklearn.metrics import auc, average_precision_score, roc_curve
from sklearn.neighbors import NearestNeighbors

from ..metric_names import HELD_OUT, metric_column
from ..outputs import ModelOutputs
from .conformal import new_group_quantile
from .mc_dropout import mutual_information, predictive_entropy


def new_group_threshold(scores: np.ndarray, groups: np.ndarray | None, keep: float) -> float:
    """The score threshold that keeps ``keep`` of a NEW acquisition group's images.

    Validation crops come in few acquisition groups (4-5 per inner split on the real copy), and
    a plain validation quantile keeps ``keep`` of those groups, not of the next one: on the real
    copy kNN at 0.975 then flagged up to 51% of a held-out fold. With two or more groups the
    threshold is ``conformal.new_group_quantile`` of the negated scores (leave-one-group-out,
    groups weighted equally, never below the exchangeable conformal rank); without groups, or
    when too few crops make that rank exceed n, the plain ``1 - keep`` quantile."""
    scores = np.asarray(scores, dtype=np.float64)
    plain = float(np.quantile(scores, 1.0 - keep, method="lower"))
    if groups is None or len(np.unique(groups)) < 2:
        return plain
    threshold = -new_group_quantile(-scores, np.asarray(groups).astype(str), 1.0 - keep)
    return threshold if np.isfinite(threshold) else plain


class Detector:
    requires_mc = False
    requires_train = False
    descriptor: str | None = None  # acquisition detectors: the descriptor they read
    level = "semantic"

    def __init__(self, keep: float = 0.95):
        self.keep = keep

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> Detector:
        if self.requires_train and train is None:
            raise ValueError(f"{type(self).__name__} needs training outputs")
        self._fit(train, val)
        self.threshold_ = new_group_threshold(self.score(val), val.groups, self.keep)
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


class DescriptorDistance(Detector):
    """Negative Mahalanobis distance of an acquisition descriptor to the reference images' mean:
    standardised, Ledoit-Wolf covariance, one Gaussian for all classes (labs differ in
    acquisition, whatever the class).

    The threshold answers "how far does a NEW acquisition group of the same lab lie?": when the
    training and validation images carry groups (at least ``MIN_GROUPS``), the Gaussian is fitted
    on all of them and the threshold is the ``1 - keep`` quantile of leave-one-group-out scores
    (each group scored by the Gaussian of the others). A plain validation quantile depends on
    which few groups the validation split happens to hold: on the real copy it let through
    most defocused or magnified crops in 3 of 5 folds. Without groups: fitted on ``train``,
    threshold on ``val``."""

    requires_train = True
    level = "acquisition"
    MIN_GROUPS = 5

    def _values(self, outputs: ModelOutputs) -> np.ndarray:
        if outputs.descriptors is None or self.descriptor not in outputs.descriptors:
            raise ValueError(f"{type(self).__name__} needs the {self.descriptor!r} descriptor")
        return np.asarray(outputs.descriptors[self.descriptor], dtype=np.float64)

    #: fitted (mean, scale, precision, threshold) by content: every arm of a fold fits the
    #: same acquisition detector on the same images (it never reads the model), so a process
    #: fits it once per fold and image set instead of once per arm. A worker runs one variant
    #: over every fold before the next, so the memo holds a run's folds (15 × ~3 fits, at
    #: most ~1.2 MB each for block moments)
    _fitted: ClassVar[OrderedDict] = OrderedDict()
    FITTED_KEPT = 64

    @classmethod
    @contextmanager
    def memo_apart(cls):
        """Fits made inside stay out of the run's memo (the ETA probe's random outputs)."""
        saved, cls._fitted = cls._fitted, OrderedDict()
        try:
            yield
        finally:
            cls._fitted = saved

    def fit(self, train, val):
        if train is None:
            raise ValueError(f"{type(self).__name__} needs training outputs")
        x, groups = self._reference(train, val)
        key = _content_key(type(self).__name__, self.keep, len(self._values(train)), x, groups)
        if key in self._fitted:
            self.mean_, self.scale_, self.precision_, self.threshold_ = self._fitted[key]
            return self
        if groups is None:
            super().fit(train, val)
        else:
            self.mean_, self.scale_, self.precision_, shrinkage = _gaussian(
                x, with_shrinkage=True)
            null = _leave_one_group_out_scores(x, groups, shrinkage)
            self.threshold_ = float(np.quantile(null, 1.0 - self.keep, method="lower"))
        self._fitted[key] = (self.mean_, self.scale_, self.precision_, self.threshold_)
        while len(self._fitted) > self.FITTED_KEPT:
            self._fitted.popitem(last=False)
        return self

    def _reference(self, train, val) -> tuple[np.ndarray, np.ndarray | None]:
        """Descriptors of train + val and their groups (None when fewer than ``MIN_GROUPS``)."""
        parts = [o for o in (train, val) if o is not None]
        x = np.concatenate([self._values(o) for o in parts])
        if any(o.groups is None for o in parts):
            return x, None
        groups = np.concatenate([np.asarray(o.groups).astype(str) for o in parts])
        return x, (groups if len(np.unique(groups)) >= self.MIN_GROUPS else None)

    def _fit(self, train, val):
        self.mean_, self.scale_, self.precision_ = _gaussian(self._values(train))

    def score(self, outputs):
        return _neg_distance((self.mean_, self.scale_, self.precision_), self._values(outputs))


def _content_key(*parts) -> str:
    """A digest of arrays (numeric or ``str``: groups arrive as ``str``) and scalars (what a fit
    saw), for ``DescriptorDistance``'s memo."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()


def _gaussian(x: np.ndarray, with_shrinkage: bool = False) -> tuple:
    """Mean, scale (std, 1 where constant) and Ledoit-Wolf precision of standardised ``x``
    (and the shrinkage intensity with ``with_shrinkage``)."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    scale = np.where(std > 1e-8, std, 1.0)
    fitted = LedoitWolf().fit((x - mean) / scale)
    return (mean, scale, fitted.precision_) + ((fitted.shrinkage_,) if with_shrinkage else ())


def _leave_one_group_out_scores(x: np.ndarray, groups: np.ndarray,
                                shrinkage: float | None = None) -> np.ndarray:
    """Every row's ``_neg_distance`` under the Gaussian of the OTHER groups, in row order.

    Each group's Gaussian (mean, scale, shrunk covariance of the standardised rest) comes from
    the full data's sums minus the group's own, so the cost is one pass over the data plus one
    d×d inverse per group, not one Ledoit-Wolf fit per group (seconds each for the 384
    block-moment columns); the shrinkage intensity is the full data's Ledoit-Wolf estimate
    (``shrinkage`` when the caller has it)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    if shrinkage is None:
        shrinkage = _gaussian(x, with_shrinkage=True)[3]
    centre = x - mean  # sums about the full mean keep the products well conditioned
    total, outer = centre.sum(axis=0), centre.T @ centre
    out = np.empty(len(x))
    for g in np.unique(groups):
        inside = groups == g
        part = centre[inside]
        n = len(x) - len(part)
        m = (total - part.sum(axis=0)) / n
        cov = (outer - part.T @ part) / n - np.outer(m, m)
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        std = np.where(std > 1e-8, std, 1.0)
        corr = cov / np.outer(std, std)
        mu = np.trace(corr) / len(corr)
        shrunk = (1.0 - shrinkage) * corr + shrinkage * mu * np.eye(len(corr))
        out[inside] = _neg_distance((mean + m, std, np.linalg.pinv(shrunk, hermitian=True)),
                                    x[inside])
    return out


def _neg_distance(gaussian, x: np.ndarray) -> np.ndarray:
    """Negative squared Mahalanobis distance of each row of ``x``, through one matrix product
    (a three-operand ``einsum`` does not use BLAS: 39× slower on 600 × 384 block moments)."""
    mean, scale, precision = gaussian
    z = np.clip((x - mean) / scale, -1e6, 1e6)
    return -np.sum((z @ precision) * z, axis=1)


class ImageStats(DescriptorDistance):
    """Colour, stain (HED), background, illumination, sharpness, noise and scale statistics of
    the image itself (``descriptors.image_statistics``)."""

    descriptor = "image_stats"


class BlockMoments(DescriptorDistance):
    """Per-channel activation moments of VGG19 blocks 1-2 (``descriptors.block_moments``)."""

    descriptor = "block_moments"


#: name -> detector class; a new detector is one small class plus one line here
DETECTORS: dict[str, type[Detector]] = {
    "msp": MSP, "maxlogit": MaxLogit, "energy": Energy, "entropy": Entropy,
    "mc_mi": MCMutualInfo, "mahalanobis": Mahalanobis, "knn": KNN,
    "image_stats": ImageStats, "block_moments": BlockMoments,
}


class InDistribution(Detector):
    """The in-distribution rule: an image is in-distribution only if the acquisition detector
    AND the semantic detector keep it, at the thresholds keeping ``acquisition_keep`` of new
    acquisition groups (leave-one-group-out, see ``DescriptorDistance``) and ``semantic_keep``
    of a new group's validation images (``new_group_threshold``). ``score`` is the smaller of the two margins (score minus threshold, in units of
    the detector's validation interquartile range), so ``score >= 0`` iff in-distribution.
    Outputs without descriptors fall back to the semantic detector alone (``names`` says
    which detectors were used)."""

    requires_train = True

    def __init__(self, acquisition_keep: float = 0.95, semantic_keep: float = 0.975,
                 acquisition: str = "image_stats", semantic: str = "knn"):
        super().__init__(min(acquisition_keep, semantic_keep))
        self.acquisition, self.semantic = acquisition, semantic
        self.keeps = {"acquisition": acquisition_keep, "semantic": semantic_keep}

    def fit(self, train, val):
        names = {"acquisition": self.acquisition, "semantic": self.semantic}
        fallback = {"acquisition": "image_stats", "semantic": "msp"}
        self.parts_ = {}
        for level, name in names.items():
            if not applicable(name, train, val):
                name = fallback[level]
            if not applicable(name, train, val):
                continue  # outputs without descriptors: the semantic detector alone
            det = DETECTORS[name](self.keeps[level]).fit(train, val)
            q75, q25 = np.percentile(det.score(val), [75, 25])
            self.parts_[name] = (det, max(float(q75 - q25), 1e-12))
        self.threshold_ = 0.0
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.parts_)

    def margins(self, outputs: ModelOutputs) -> dict[str, np.ndarray]:
        return {n: (d.score(outputs) - d.threshold_) / iqr for n, (d, iqr) in self.parts_.items()}

    def score(self, outputs):
        return np.min(np.stack(list(self.margins(outputs).values())), axis=0)


def ood_metrics(score_in: np.ndarray, score_out: np.ndarray,
                precision_recall: bool = True) -> dict[str, float]:
    """AUROC and FPR at 95% TPR (and, with ``precision_recall``, AUPR-in and AUPR-out);
    in-distribution = positive, higher score = more in-distribution. FPR95: fraction of OOD
    images accepted by the threshold that keeps 95% of in-distribution images. AUROC is the
    area under the one ROC curve that FPR95 reads (``roc_auc_score`` computes the same)."""
    y = np.r_[np.ones(len(score_in)), np.zeros(len(score_out))]
    s = np.r_[score_in, score_out].astype(np.float64)
    fpr, tpr, _ = roc_curve(y, s)
    res = {"auroc": float(auc(fpr, tpr)),
           "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")])}
    if precision_recall:
        res.update(aupr_in=float(average_precision_score(y, s)),
                   aupr_out=float(average_precision_score(1 - y, -s)))
    return res


def has_descriptor(outputs: ModelOutputs | None, name: str | None) -> bool:
    return name is None or (outputs is not None and outputs.descriptors is not None
                            and name in outputs.descriptors)


def applicable(name: str, train: ModelOutputs | None, val: ModelOutputs) -> bool:
    cls = DETECTORS[name]
    return not ((cls.requires_mc and val.mc_probs is None)
                or (cls.requires_train and train is None)
                or not (has_descriptor(train, cls.descriptor)
                        and has_descriptor(val, cls.descriptor)))


def usable_on(det: Detector, outputs: ModelOutputs) -> bool:
    """Whether ``outputs`` carries what ``det`` reads (MC samples, descriptors)."""
    if isinstance(det, InDistribution):
        return all(usable_on(part, outputs) for part, _ in det.parts_.values())
    return (not (det.requires_mc and outputs.mc_probs is None)
            and has_descriptor(outputs, det.descriptor))


#: the OOD metrics reported per detector and set (AUPR stays available in ``ood_metrics``)
REPORTED = ("auroc", "fpr95")
FLAG = "in_distribution"  # name of the combined rule in result keys


class OODScorer:
    """Fits every applicable detector and the ``InDistribution`` rule on (train, val).

    ``score_sets`` returns, against the held-out test fold (new acquisition groups):
    ``ood_heldout_<det>_flagged`` (share of held-out images called out: the false-alarm rate a
    lab pays), and for every OOD set ``ood_<set>_<det>_{auroc,fpr95,flagged}``; sets in
    ``graded`` (milder shift severities) get only the rule's ``ood_<set>_in_distribution_flagged``.
    MC detectors are skipped when an image set has no ``mc_probs``."""

    def __init__(self, detectors: tuple[str, ...] | None = None, acquisition_keep: float = 0.95,
                 semantic_keep: float = 0.975, acquisition: str = "image_stats",
                 semantic: str = "knn"):
        self.detectors = detectors
        self.rule = InDistribution(acquisition_keep, semantic_keep, acquisition, semantic)

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> OODScorer:
        names = self.detectors or tuple(DETECTORS)
        self.detectors_: dict[str, Detector] = {
            n: DETECTORS[n]().fit(train, val) for n in names if applicable(n, train, val)}
        if train is not None:
            self.detectors_[FLAG] = self.rule.fit(train, val)
        return self

    def score_sets(self, test: ModelOutputs, ood_sets: dict[str, ModelOutputs],
                   graded: dict[str, ModelOutputs] | None = None) -> dict[str, float]:
        res = {}
        for name, det in self.detectors_.items():
            if not usable_on(det, test):
                continue
            s_in = det.score(test)
            res[metric_column("ood", "flagged", set=HELD_OUT, method=name)] = float(
                np.mean(s_in < det.threshold_))
            for set_name, ood in ood_sets.items():
                if not usable_on(det, ood):
                    continue
                s_out = det.score(ood)
                metrics = ood_metrics(s_in, s_out, precision_recall=False)
                for k in REPORTED:
                    res[metric_column("ood", k, set=set_name, method=name)] = metrics[k]
                res[metric_column("ood", "flagged", set=set_name, method=name)] = float(
                    np.mean(s_out < det.threshold_))
        rule = self.detectors_.get(FLAG)
        for set_name, ood in (graded or {}).items():
            if rule is not None and usable_on(rule, ood):
                res[metric_column("ood", "flagged", set=set_name, method=FLAG)] = float(
                    np.mean(rule.score(ood) < rule.threshold_))
        return res
