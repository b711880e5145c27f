"""Donor groups for grouped cross-validation.

The public SMIDS release has no per-image donor ID, so groups come either from a manifest CSV
(``path,donor``; :func:`read_manifest`) or are inferred from acquisition statistics
(background colour, illumination, sharpness, noise) with exact and near duplicates forced into
one group (:class:`AcquisitionGrouper`, :func:`infer_groups`).
"""

from __future__ import annotations

import csv
import hashlib
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import fft, ndimage
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import AgglomerativeClustering
from sklearn.preprocessing import StandardScaler

from .data.scan import listing
from .errors import ConfigError, DataError

GROUPING_SOURCES = ("manifest", "inferred")
#: how a user gets inferred groups instead of a manifest (the CLI has no option naming a source)
INFERRED_ADVICE = ("drop --groups-file (and move a donors.csv out of the data folder) to use "
                   "inferred acquisition groups, --n-groups N")
MANIFEST_COLUMNS = ("path", "donor")

# ----------------------------------------------------------------------------- manifest


def normalise_path(path: str | os.PathLike) -> str:
    """Posix form of a relative path: ``\\`` becomes ``/``, ``./`` and ``a/../`` are folded."""
    text = str(path).strip().replace("\\", "/")
    return posixpath.normpath(text) if text else ""


def _read_rows(csv_path: Path) -> list[list[str]]:
    """All CSV rows (header included); unreadable or malformed files raise DataError."""
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as fh:
            return list(csv.reader(fh, strict=True))
    except FileNotFoundError:
        raise DataError(f"donor manifest not found: {csv_path}; create it (columns path,donor) "
                        f"or {INFERRED_ADVICE}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"donor manifest {csv_path} is not a readable UTF-8 CSV "
                        f"({type(exc).__name__}: {exc}); re-export it as CSV with columns "
                        "path,donor") from exc


def _parse_rows(rows: list[list[str]], csv_path: Path, root: Path | None
                ) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """Map normalised path -> (line, donor); collect malformed and duplicate rows."""
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if tuple(header) != MANIFEST_COLUMNS:
        raise DataError(f"donor manifest {csv_path}: header is {rows[0] if rows else 'missing'}, "
                        "expected exactly 'path,donor'; fix the first line of the file")
    donors: dict[str, tuple[int, str]] = {}
    problems: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            problems.append(f"line {line}: {row!r} (need a non-empty path and donor)")
            continue
        path = _relative_to_root(normalise_path(row[0]), root)
        if path in donors:
            problems.append(f"line {line}: duplicate row for {path} (first on line "
                            f"{donors[path][0]})")
            continue
        donors[path] = (line, row[1].strip())
    return donors, problems


def _relative_to_root(path: str, root: Path | None) -> str:
    """Absolute manifest paths under ``root`` become relative to it."""
    if root is not None and posixpath.isabs(path):
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            return path
    return path


def read_manifest(csv_path: str | os.PathLike, paths: Sequence[str | os.PathLike],
                  root: str | os.PathLike | None = None) -> np.ndarray:
    """Donor of every path in ``paths`` (relative to the data root), from a ``path,donor`` CSV.

    Paths may use ``/`` or ``\\``; absolute manifest paths are made relative to ``root``.
    A malformed file, duplicate rows, rows for files not in ``paths`` or files without a row
    raise one :class:`DataError` that lists all of them.
    """
    csv_path = Path(csv_path)
    donors, problems = _parse_rows(_read_rows(csv_path), csv_path, Path(root) if root else None)
    wanted = [normalise_path(p) for p in paths]
    unknown = sorted(set(donors) - set(wanted))
    without_row = [p for p in wanted if p not in donors]
    sections = []
    if problems:
        sections.append(f"{len(problems)} malformed or duplicate row(s):\n" + listing(problems))
    if unknown:
        sections.append(f"{len(unknown)} row(s) for files that are not in the data set:\n"
                        + listing([f"line {donors[p][0]}: {p}" for p in unknown]))
    if without_row:
        sections.append(f"{len(without_row)} image(s) without a row:\n" + listing(without_row))
    if sections:
        raise DataError(f"donor manifest {csv_path} does not match the data set:\n- "
                        + "\n- ".join(sections)
                        + "\nGive every image exactly one 'path,donor' row (paths relative to the "
                          f"data folder), or {INFERRED_ADVICE}.")
    return np.array([donors[p][1] for p in wanted], dtype=str)


# ----------------------------------------------------------------------------- image statistics

_SRGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
_D65_WHITE = np.array([0.950456, 1.0, 1.088754])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) of sRGB values in [0, 1], shape (..., 3)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def _border(images: np.ndarray) -> np.ndarray:
    """Pixels of a frame one eighth of the side wide, shape (N, P, 3)."""
    size = images.shape[1]
    width = max(1, size // 8)
    frame = np.ones((size, size), dtype=bool)
    frame[width:-width, width:-width] = False
    return images[:, frame]


def acquisition_features(images: np.ndarray) -> np.ndarray:
    """Per-image acquisition statistics, shape (N, 8).

    Columns: background L, a, b (median of the border, in Lab), luminance mean and std,
    log sharpness (variance of the Laplacian), log noise (Immerkær estimate), border spread.
    """
    images = _check_images(images)
    grey = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    border = _border(images).astype(np.float32)
    background = rgb_to_lab(np.median(border, axis=1) / 255.0)
    laplacian = ndimage.laplace(grey, axes=(1, 2))[:, 1:-1, 1:-1]
    sharpness = np.log1p(laplacian.reshape(len(grey), -1).var(axis=1))
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    residual = ndimage.convolve(grey, kernel[None])[:, 1:-1, 1:-1]
    noise = np.log1p(np.sqrt(np.pi / 2) / 6 * np.abs(residual).mean(axis=(1, 2)))
    spread = np.log1p(np.percentile(border.mean(axis=2), 75, axis=1)
                      - np.percentile(border.mean(axis=2), 25, axis=1))
    flat = grey.reshape(len(grey), -1)
    return np.column_stack([background, flat.mean(axis=1), flat.std(axis=1),
                            sharpness, noise, spread])


def _low_frequencies(images: np.ndarray, hash_size: int) -> np.ndarray:
    """Top-left ``hash_size``² orthonormal DCT coefficients of the grey image, per pixel scale.

    Euclidean distance between two rows is the RMS grey-level difference of the low-passed
    images."""
    grey = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    low = fft.dctn(grey, axes=(1, 2), norm="ortho")[:, :hash_size, :hash_size]
    return low.reshape(len(grey), -1) / images.shape[1]


def perceptual_hashes(images: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """DCT pHash bits, shape (N, hash_size²): low-frequency DCT coefficients above their
    median (the DC term left out of the median)."""
    low = _low_frequencies(_check_images(images), hash_size)
    return low > np.median(low[:, 1:], axis=1, keepdims=True)


def _hash_candidates(hashes: np.ndarray, threshold: int, block: int = 2048) -> np.ndarray:
    """Index pairs (i < j) whose hashes differ in at most ``threshold`` bits, shape (P, 2)."""
    bits = hashes.astype(np.float32)
    flipped = 1.0 - bits
    pairs = [np.empty((0, 2), dtype=np.intp)]
    for start in range(0, len(bits), block):
        agree = bits[start:start + block] @ bits.T + flipped[start:start + block] @ flipped.T
        i, j = np.nonzero(bits.shape[1] - agree <= threshold + 0.5)
        i += start
        pairs.append(np.column_stack([i[i < j], j[i < j]]))
    return np.concatenate(pairs)


def near_duplicate_pairs(images: np.ndarray, phash_threshold: int = 10,
                         max_lowpass_rms: float = 2.0) -> np.ndarray:
    """Pairs (i < j) of exact or near duplicates, shape (P, 2).

    A pair has pHash Hamming distance <= ``phash_threshold`` (of 64 bits) and its low-passed
    grey images differ by at most ``max_lowpass_rms`` grey levels (RMS). The second test
    rejects distinct smooth images whose 64-bit hashes collide: on 1200 synthetic crops the
    hash alone pairs ~140 unrelated images at threshold 4, while re-scaled, blurred and noisy
    copies stay below 1.2 grey levels and unrelated images above 2.9.
    """
    images = _check_images(images)
    low = _low_frequencies(images, 8)
    bits = low > np.median(low[:, 1:], axis=1, keepdims=True)
    pairs = _hash_candidates(bits, phash_threshold)
    rms = np.linalg.norm(low[pairs[:, 0]] - low[pairs[:, 1]], axis=1)
    return pairs[rms <= max_lowpass_rms]


def merge_groups(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Union the groups of every pair, then relabel 0..G-1 in order of first appearance."""
    parent = np.arange(labels.max() + 1 if labels.size else 0)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        a, b = root(labels[i]), root(labels[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    merged = np.array([root(g) for g in labels], dtype=np.intp)
    _, first, inverse = np.unique(merged, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse]


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2] \
            or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, S, S, 3) RGB, got {images.dtype} "
                         f"{images.shape}")
    return images


# ----------------------------------------------------------------------------- grouper


class AcquisitionGrouper(ClusterMixin, BaseEstimator):
    """Infer acquisition (donor-like) groups from image statistics.

    Standardises :func:`acquisition_features`, down-weights everything but the background
    colour by ``secondary_weight`` (stain colour is the strongest acquisition cue; sharpness
    and noise also vary with content), collapses exact and near duplicates
    (:func:`near_duplicate_pairs`) into one unit each (mean features), and clusters the units
    with Ward linkage into ``n_groups`` groups. Duplicates therefore always share a group, and,
    unlike merging clusters afterwards, one duplicate pair cannot chain whole clusters together
    (on the real SMIDS copy that merged 4 clusters into one group of 1850 of 3000 images).
    Ward linkage is deterministic and fast, so ``seed`` has no effect; it is kept so callers
    can pass their run seed uniformly. After ``fit``: ``labels_`` (0..G-1, G <= ``n_groups``),
    ``n_groups_``, ``features_``, ``duplicate_pairs_``.
    """

    def __init__(self, n_groups: int = 17, seed: int = 0, phash_threshold: int = 10,
                 max_lowpass_rms: float = 2.0, secondary_weight: float = 0.4):
        self.n_groups = n_groups
        self.seed = seed
        self.phash_threshold = phash_threshold
        self.max_lowpass_rms = max_lowpass_rms
        self.secondary_weight = secondary_weight

    def fit(self, images: np.ndarray, y=None, units: np.ndarray | None = None
            ) -> AcquisitionGrouper:
        """``units``: images already known to belong together (``cells.linked_units``: same
        cell or field); they are collapsed with the near duplicates before clustering."""
        images = _check_images(images)
        if self.n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {self.n_groups}")
        if len(images) == 0:
            raise ValueError("images is empty; there is nothing to group")
        self.features_ = acquisition_features(images)
        self.duplicate_pairs_ = near_duplicate_pairs(images, self.phash_threshold,
                                                     self.max_lowpass_rms)
        units = merge_groups(np.arange(len(images)) if units is None else np.asarray(units),
                             self.duplicate_pairs_)
        sums = np.zeros((units.max() + 1, self.features_.shape[1]))
        np.add.at(sums, units, self.features_)
        unit_features = sums / np.bincount(units)[:, None]
        clusters = self._cluster(unit_features)[units]
        self.labels_ = merge_groups(clusters, np.empty((0, 2), dtype=np.intp))
        self.n_groups_ = int(self.labels_.max()) + 1
        return self

    def _cluster(self, features: np.ndarray) -> np.ndarray:
        n_clusters = min(self.n_groups, len(np.unique(features, axis=0)))
        if n_clusters < 2:
            return np.zeros(len(features), dtype=np.intp)
        weights = np.full(features.shape[1], self.secondary_weight)
        weights[:3] = 1.0  # background L, a, b
        scaled = StandardScaler().fit_transform(features) * weights
        return AgglomerativeClustering(n_clusters=n_clusters).fit_predict(scaled)


def _unit_pairs(units: np.ndarray) -> np.ndarray:
    """(P, 2) pairs chaining the members of every unit (first member with each other one)."""
    order = np.argsort(units, kind="stable")
    same = units[order][1:] == units[order][:-1]
    starts = np.r_[0, np.flatnonzero(~same) + 1]
    first = order[np.repeat(starts, np.diff(np.r_[starts, len(order)]))]
    keep = first != order
    return np.column_stack([first[keep], order[keep]]).astype(np.intp)


def infer_groups(images: np.ndarray, n_groups: int = 17, seed: int = 0,
                 phash_threshold: int = 10) -> np.ndarray:
    """Inferred acquisition group (0..G-1) of every image; see :class:`AcquisitionGrouper`."""
    grouper = AcquisitionGrouper(n_groups=n_groups, seed=seed, phash_threshold=phash_threshold)
    return grouper.fit(images).labels_


def groups_digest(groups) -> str:
    """Eight hex digits of the image-to-group assignment: part of every Optuna study name and
    of a run folder's identity, so neither is reused under other groups."""
    return hashlib.sha256("\n".join(map(str, np.asarray(groups))).encode()).hexdigest()[:8]


def resolve_groups(dataset, groups_file: str | os.PathLike | None = None, *, n_groups: int = 17,
                   seed: int = 0, units: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Donor group of every image of ``dataset`` and the grouping source recorded in results:
    ``--groups-file`` > the data set's own manifest (the synthetic set ships one) > inferred.
    ``units`` (``cells.linked_units``) are never split: manifest groups joined by a unit are
    merged, inferred groups are formed from whole units."""
    manifest = Path(groups_file) if groups_file else dataset.source.manifest
    if manifest is not None:
        donors = np.asarray(read_manifest(manifest, dataset.paths, root=dataset.root), dtype=str)
        if units is None:
            return donors, "manifest"
        names, codes = np.unique(donors, return_inverse=True)
        pairs = _unit_pairs(np.asarray(units))
        merged = merge_groups(codes, pairs)
        first = {m: names[codes[np.flatnonzero(merged == m)[0]]] for m in np.unique(merged)}
        return np.array([first[m] for m in merged], dtype=str), "manifest"
    if n_groups > len(dataset):
        raise ConfigError(f"--n-groups {n_groups} is more than the {len(dataset)} images of "
                          f"{dataset.source.describe()}: inferred groups would be single images, "
                          f"not acquisitions; use --n-groups {len(dataset)} or fewer (default 17)")
    labels = AcquisitionGrouper(n_groups=n_groups, seed=seed).fit(dataset.images,
                                                                   units=units).labels_
    return np.array([f"inferred_{g:02d}" for g in labels]), "inferred"
