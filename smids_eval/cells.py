"""Same-cell links: re-crops of one cell or field (windows shifted by a few pixels, cut a little
larger or smaller) become one unit, so no split ever puts the same cell in training and test.

Byte-identical and near-identical copies are found by ``groups.near_duplicate_pairs`` on the
resized images. Re-crops need the files themselves: resizing crops of different sizes to one
square side rescales them differently, while at native resolution a re-crop is a pure shift.
So every file is read in grey at half resolution (same pixel scale for all), and

1. candidates: each crop's ``k`` nearest neighbours by the log magnitude of its low-frequency
   Fourier spectrum (invariant to the shift);
2. alignment: the shift at the peak of the band-limited phase correlation;
3. verification: normalised correlation of the high-pass images (fine structure: tails, debris,
   edges; not the smooth background every crop shares) on the overlap, which must cover at
   least ``min_overlap`` of the smaller crop. Pairs reaching ``min_correlation`` are linked.

On the real SMIDS copy, 10 of 10 pairs scoring 0.90-0.95, sampled and labelled by eye, are
the same cell; at 0.80-0.90 about 6 of 10 are, so the default threshold is 0.9 (precision
first: a false link only merges two units, a missed one can leak a cell across a split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.neighbors import NearestNeighbors

from .data.decode import read_image

FACTOR = 2            # files are compared at 1/FACTOR of their native resolution
MIN_CORRELATION = 0.9
MIN_OVERLAP = 0.4


def load_grey(paths, factor: int = FACTOR) -> list[np.ndarray]:
    """Grey float32 crops at 1/``factor`` of native resolution (aspect kept)."""
    out = []
    for path in paths:
        im = read_image(path).convert("L")
        w, h = im.size
        out.append(np.asarray(im.resize((max(8, w // factor), max(8, h // factor)),
                                        Image.BILINEAR), dtype=np.float32))
    return out


def _canvas_side(crops: list[np.ndarray]) -> int:
    side = max(max(c.shape) for c in crops)
    return int(-(-side // 8) * 8)


def _spectra(crops: list[np.ndarray], side: int) -> np.ndarray:
    """rFFT of each zero-mean, Hann-windowed crop on a zero canvas of ``side``."""
    canvas = np.zeros((len(crops), side, side), dtype=np.float32)
    for k, c in enumerate(crops):
        c = c[:side, :side]
        canvas[k, :c.shape[0], :c.shape[1]] = (c - c.mean()) * np.outer(
            np.hanning(c.shape[0]), np.hanning(c.shape[1]))
    return np.fft.rfft2(canvas)


def _band(side: int) -> np.ndarray:
    radius = np.hypot(np.fft.fftfreq(side)[:, None], np.fft.rfftfreq(side)[None, :])
    return ((radius > 0.01) & (radius <= 0.2)).astype(np.float32)


def candidate_pairs(spectra: np.ndarray, k: int = 8) -> np.ndarray:
    """(P, 2) index pairs i < j: each crop with its ``k`` nearest neighbours by the
    shift-invariant spectrum descriptor."""
    keep = min(24, spectra.shape[2])
    mag = np.log1p(np.abs(spectra[:, :, :keep]))
    desc = np.concatenate([mag[:, :keep], mag[:, -keep:]], axis=1).reshape(len(spectra), -1)
    desc = desc - desc.mean(axis=1, keepdims=True)
    desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-9)
    n = min(k + 1, len(spectra))
    _, nn = NearestNeighbors(n_neighbors=n).fit(desc).kneighbors(desc)
    pairs = np.column_stack([np.repeat(np.arange(len(spectra)), n - 1), nn[:, 1:].ravel()])
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def _shifts(spectra: np.ndarray, pairs: np.ndarray, side: int, chunk: int = 1024) -> np.ndarray:
    """(P, 2) shift (dy, dx) with a[y, x] ~ b[y - dy, x - dx], from phase correlation."""
    band = _band(side)
    out = []
    for start in range(0, len(pairs), chunk):
        p = pairs[start:start + chunk]
        r = spectra[p[:, 0]] * np.conj(spectra[p[:, 1]])
        r = r / np.maximum(np.abs(r), 1e-9) * band
        peak = np.fft.irfft2(r, s=(side, side)).reshape(len(p), -1).argmax(axis=1)
        dy, dx = np.unravel_index(peak, (side, side))
        out.append(np.column_stack([np.where(dy > side // 2, dy - side, dy),
                                    np.where(dx > side // 2, dx - side, dx)]))
    return np.concatenate(out) if out else np.empty((0, 2), dtype=np.intp)


def overlap_correlation(a: np.ndarray, b: np.ndarray, dy: int, dx: int,
                        min_overlap: float = MIN_OVERLAP) -> float:
    """Normalised correlation of ``a`` and ``b`` shifted by (dy, dx) on their overlap; 0 when
    the overlap covers less than ``min_overlap`` of the smaller crop."""
    y0, y1 = max(0, dy), min(a.shape[0], b.shape[0] + dy)
    x0, x1 = max(0, dx), min(a.shape[1], b.shape[1] + dx)
    if y1 - y0 < 4 or x1 - x0 < 4 or (y1 - y0) * (x1 - x0) < min_overlap * min(a.size, b.size):
        return 0.0
    pa = a[y0:y1, x0:x1] - a[y0:y1, x0:x1].mean()
    pb = b[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    pb = pb - pb.mean()
    return float((pa * pb).sum() / np.sqrt((pa * pa).sum() * (pb * pb).sum() + 1e-9))


def pair_scores(crops: list[np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """High-pass overlap correlation of each pair after phase-correlation alignment."""
    side = _canvas_side(crops)
    shifts = _shifts(_spectra(crops, side), pairs, side)
    high = [c - ndimage.gaussian_filter(c, 3) for c in crops]
    return np.array([overlap_correlation(high[i], high[j], int(dy), int(dx))
                     for (i, j), (dy, dx) in zip(pairs, shifts, strict=True)])


def linked_units(images: np.ndarray, paths, labels: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Unit id (0..U-1) of every image: byte-identical or near-identical copies
    (``groups.near_duplicate_pairs`` on the decoded ``images``) and re-crops of one cell (the
    files ``paths``) are one unit. Also returns the linking pairs (P, 2)."""
    from .groups import merge_groups, near_duplicate_pairs

    links = np.concatenate([near_duplicate_pairs(images), same_cell_pairs(paths)[0]])
    units = merge_groups(np.arange(len(images)), links.astype(np.intp))
    return units, links


def conflicting_units(units: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each multi-image unit whose images carry more than one label."""
    out = []
    for u in np.unique(units):
        members = np.flatnonzero(units == u)
        if len(members) > 1 and len(np.unique(labels[members])) > 1:
            out.append(members)
    return out


def same_cell_pairs(paths, min_correlation: float = MIN_CORRELATION, k: int = 8
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Linked pairs (P, 2) of the files ``paths`` (re-crops of one cell) and their scores."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        return np.empty((0, 2), dtype=np.intp), np.empty(0)
    crops = load_grey(paths)
    pairs = candidate_pairs(_spectra(crops, _canvas_side(crops)), k)
    scores = pair_scores(crops, pairs)
    keep = scores >= min_correlation
    return pairs[keep], scores[keep]
