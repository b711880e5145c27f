"""Is this batch of images from the same acquisition as the reference? A two-sample test on
acquisition-level feature vectors (float (n, d), computed elsewhere), after "Failing Loudly"
(Rabanser, Günnemann & Lipton, NeurIPS 2019): Gaussian-kernel MMD with a permutation p-value.

Features are standardised with the reference mean/std; the kernel bandwidth is the median
pairwise distance of the (standardised) reference, so it is fixed under permutation. The
reference is subsampled (seeded) to at most ``max_reference`` rows.

The null that matters to a lab is "this batch is a new acquisition session of the same lab",
not "this batch is exchangeable with the reference images". Reference images come from several
acquisition groups (donors, sessions) and session-to-session variation alone makes a plain
permutation test reject for almost any new session once the batch is large enough. With
``groups`` (>= ``min_groups`` distinct groups that have >= ``min_group_size`` images each),
:class:`BatchShiftTest` therefore calibrates against held-out groups instead, on a statistic that
does not saturate for far shifts (a Gaussian-kernel MMD does): the median squared Mahalanobis
distance of the batch to the reference (standardised features, Ledoit-Wolf covariance, which
absorbs the between-group variation). For each usable group, the same statistic of up to
``null_batch`` of its images under a Gaussian fitted WITHOUT that group is a draw under "new
session, same lab"; their logs are fitted with a normal and
``p = 1 - Phi((log(stat) - mean) / std)``. This is a *parametric approximation* (log-normal
null fitted from as few as ``min_groups`` values, its own uncertainty ignored, so somewhat
anti-conservative with few groups); the permutation p-value is exact under exchangeability but
answers the stricter question.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("auto", "permutation", "group_calibrated")


@dataclass(frozen=True)
class BatchShiftResult:
    """``statistic``: unbiased MMD² of batch vs reference (standardised features);
    ``p_value``: small = the batch is unlike the reference; ``method``: "permutation" or
    "group_calibrated"; ``n_null``: permutations or held-out groups behind the p-value;
    ``null_log_mean``/``null_log_std``: the fitted log-normal null (group method only)."""

    statistic: float
    p_value: float
    n_batch: int
    n_reference: int
    method: str = "permutation"
    n_null: int = 0
    bandwidth: float = float("nan")
    null_log_mean: float | None = None
    null_log_std: float | None = None

    def as_dict(self) -> dict:
        """JSON-serialisable dict (plain floats/ints/str/None; NaN becomes None)."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            out[key] = value
        return out


# ----------------------------------------------------------------------------- kernel maths

def _as_features(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name}: expected a float array (n, d) with n >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return x


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _median_bandwidth(z: np.ndarray) -> float:
    """Median pairwise distance (median heuristic); 1.0 when all points coincide."""
    d = _sq_dists(z, z)[np.triu_indices(len(z), k=1)]
    sigma2 = float(np.median(d)) if d.size else 0.0
    return math.sqrt(sigma2) if sigma2 > 1e-12 else 1.0


def _kernel(z: np.ndarray, bandwidth: float) -> np.ndarray:
    return np.exp(-_sq_dists(z, z) / (2.0 * bandwidth ** 2))


def _mmd2_from_masks(k: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Unbiased MMD² of Y (mask True) vs X (mask False) within the pooled kernel ``k`` (k_ii = 1),
    for each row of the boolean ``masks`` (P, N) at once."""
    a = masks.astype(np.float64)
    m = a.sum(1)
    n = a.shape[1] - m
    row = k.sum(1)
    total = row.sum()
    yy = ((a @ k) * a).sum(1)           # a^T K a, diagonal included
    xy = a @ row - yy                   # (1-a)^T K a
    xx = total - 2.0 * (a @ row) + yy   # (1-a)^T K (1-a)
    return (xx - n) / (n * (n - 1)) + (yy - m) / (m * (m - 1)) - 2.0 * xy / (n * m)


def _mmd2(k: np.ndarray, x_idx: np.ndarray, y_idx: np.ndarray) -> float:
    """Unbiased MMD² of rows ``y_idx`` vs rows ``x_idx`` of the pooled kernel ``k``."""
    n, m = len(x_idx), len(y_idx)
    kxx, kyy = k[np.ix_(x_idx, x_idx)], k[np.ix_(y_idx, y_idx)]
    kxy = k[np.ix_(x_idx, y_idx)]
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
                 + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2.0 * kxy.mean())


def _permutation_p(k: np.ndarray, n_batch: int, observed: float, n_permutations: int,
                   rng: np.random.Generator, chunk: int = 100) -> float:
    """(1 + #{permuted >= observed}) / (1 + n_permutations); the batch is the last ``n_batch``
    rows of ``k``."""
    size = k.shape[0]
    hits = 0
    for start in range(0, n_permutations, chunk):
        p = min(chunk, n_permutations - start)
        order = rng.permuted(np.tile(np.arange(size), (p, 1)), axis=1)
        masks = order < n_batch  # a random n_batch-subset of rows per permutation
        hits += int((_mmd2_from_masks(k, masks) >= observed - 1e-12).sum())
    return (1 + hits) / (1 + n_permutations)


def _standardiser(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = reference.mean(0)
    std = reference.std(0)
    return mean, np.where(std > 1e-12, std, 1.0)


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, limit, replace=False)) if n > limit else np.arange(n)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


# ----------------------------------------------------------------------------- public API

def mmd_test(reference: np.ndarray, batch: np.ndarray, n_permutations: int = 500,
             seed: int = 0, max_reference: int = 500) -> BatchShiftResult:
    """Gaussian-kernel MMD two-sample test of ``batch`` against ``reference`` (both (n, d)),
    permutation p-value; deterministic for ``seed``."""
    return BatchShiftTest(n_permutations=n_permutations, method="permutation", seed=seed,
                          max_reference=max_reference).fit(reference).test(batch)


class BatchShiftTest:
    """Fit on reference (validation) features, then ``test`` batches of new images.

    ``method``: "auto" (group-calibrated when ``groups`` qualify, else permutation),
    "permutation" or "group_calibrated" (falls back to permutation when groups do not qualify;
    the result's ``method`` says which was used). Stores only the standardised reference
    subsample (<= ``max_reference`` rows), its groups and a few numbers: small and picklable."""

    def __init__(self, n_permutations: int = 500, method: str = "auto", seed: int = 0,
                 max_reference: int = 500, min_groups: int = 5, min_group_size: int = 10,
                 null_batch: int = 50):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.n_permutations = int(n_permutations)
        self.method = method
        self.seed = seed
        self.max_reference = int(max_reference)
        self.min_groups = int(min_groups)
        self.min_group_size = int(min_group_size)
        self.null_batch = int(null_batch)

    def fit(self, reference_features, groups=None) -> BatchShiftTest:
        reference = _as_features(reference_features, "reference_features")
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape != (len(reference),):
                raise ValueError(f"groups: expected shape ({len(reference)},), got {groups.shape}")
        rng = np.random.default_rng([self.seed, 0])
        self.mean_, self.std_ = _standardiser(reference)
        keep = _subsample(len(reference), self.max_reference, rng)
        self.reference_ = ((reference[keep] - self.mean_) / self.std_).astype(np.float64)
        self.groups_ = None if groups is None else groups[keep]
        self.bandwidth_ = _median_bandwidth(self.reference_)
        self.n_reference_ = len(reference)
        self.gaussian_, self.null_ = None, np.empty(0)
        if self.method != "permutation" and groups is not None:
            self._fit_group_null(reference, groups, np.random.default_rng([self.seed, 2]))
        return self

    def _fit_group_null(self, reference: np.ndarray, groups: np.ndarray,
                        rng: np.random.Generator) -> None:
        """Leave-one-group-out draws of the batch statistic (see the module docstring)."""
        names, counts = np.unique(groups, return_counts=True)
        usable = names[counts >= self.min_group_size]
        if len(usable) < self.min_groups:
            return
        null = []
        for g in usable:
            inside = np.flatnonzero(groups == g)
            take = rng.choice(inside, min(self.null_batch, len(inside)), replace=False)
            null.append(_Gaussian(reference[groups != g]).statistic(reference[take]))
        self.gaussian_ = _Gaussian(reference)
        self.null_ = np.asarray(null)

    def test(self, batch_features) -> BatchShiftResult:
        if not hasattr(self, "reference_"):
            raise RuntimeError("BatchShiftTest.test called before fit")
        batch = _as_features(batch_features, "batch_features")
        if batch.shape[1] != self.reference_.shape[1]:
            raise ValueError(f"batch_features: expected {self.reference_.shape[1]} features, "
                             f"got {batch.shape[1]}")
        n_ref, n_batch = len(self.reference_), len(batch)
        if self.gaussian_ is not None and len(self.null_):
            stat = self.gaussian_.statistic(batch)
            log_mean, log_std = _log_normal_fit(self.null_)
            z = (math.log(max(stat, _floor(self.null_))) - log_mean) / log_std
            return BatchShiftResult(statistic=stat, p_value=_normal_sf(z),
                                    method="group_calibrated", n_batch=n_batch,
                                    n_reference=self.n_reference_, n_null=len(self.null_),
                                    bandwidth=self.bandwidth_, null_log_mean=log_mean,
                                    null_log_std=log_std)
        rng = np.random.default_rng([self.seed, 1])
        z_batch = (batch - self.mean_) / self.std_
        k = _kernel(np.concatenate([self.reference_, z_batch]), self.bandwidth_)
        observed = _mmd2(k, np.arange(n_ref), np.arange(n_ref, n_ref + n_batch))
        common = {"statistic": observed, "n_batch": n_batch, "n_reference": self.n_reference_,
                  "bandwidth": self.bandwidth_}
        p = _permutation_p(k, n_batch, observed, self.n_permutations, rng)
        return BatchShiftResult(p_value=p, method="permutation", n_null=self.n_permutations,
                                **common)


class _Gaussian:
    """Standardised features, Ledoit-Wolf precision; ``statistic`` = median squared
    Mahalanobis distance of a batch (robust to a few odd images in it)."""

    def __init__(self, x: np.ndarray):
        from sklearn.covariance import LedoitWolf

        self.mean, self.std = _standardiser(x)
        self.precision = LedoitWolf().fit((x - self.mean) / self.std).precision_

    def statistic(self, batch: np.ndarray) -> float:
        z = np.clip((batch - self.mean) / self.std, -1e6, 1e6)
        return float(np.median(np.einsum("nd,de,ne->n", z, self.precision, z)))


def _floor(null: np.ndarray) -> float:
    """Smallest MMD² taken to the log: a quarter of the median null value. The unbiased estimate
    scatters around 0 for groups that happen to sit close to the rest; left alone, such
    near-zero (or clipped negative) values would dominate the spread of the logs and make the
    fitted null absurdly wide."""
    return 0.25 * float(np.median(null))


def _log_normal_fit(null: np.ndarray) -> tuple[float, float]:
    """Mean and std (ddof 1) of log(max(null statistic, floor)); the std is guarded from below
    (0.05 in log units, ~5% relative spread) so near-identical null values do not give p ~ 0 to
    any batch slightly above them."""
    logs = np.log(np.maximum(null, _floor(null)))
    return float(logs.mean()), max(float(logs.std(ddof=1)), 0.05)


__all__ = ["BatchShiftResult", "BatchShiftTest", "mmd_test"]
