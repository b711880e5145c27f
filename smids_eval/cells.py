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

Byte-identical files (same SHA-256) are always one unit. On the real SMIDS copy a stratified
sample of candidate pairs was labelled by eye (``studies/labels/smids_same_cell_pairs.csv``,
drawn by ``benchmark/same_cell_sample.py``; ``link_precision`` summarises it): 20 of 20 pairs
scoring >= 0.9 are the same cell (Clopper-Pearson 95% interval 0.83-1), 6 of 14 at 0.8-0.9
(one more unsure), 0 of 10 at 0.6-0.8. Hence the threshold 0.9 (precision first: a false link
only merges two units, a missed one can leak a cell across a split; the 0.8-0.9 band holds
real re-crops the linker misses, alongside look-alike lone cells on a plain background).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from sklearn.neighbors import NearestNeighbors

from .data.decode import read_image
from .io import load_numpy, save_numpy

FACTOR = 2            # files are compared at 1/FACTOR of their native resolution
MIN_CORRELATION = 0.9
MIN_OVERLAP = 0.4


def file_hashes(paths) -> list[str]:
    """SHA-256 of each file's bytes: byte-identical copies share it, whatever their names."""
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


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


def canvas_side(paths, factor: int = FACTOR) -> int:
    """The Fourier canvas side ``same_cell_pairs`` uses for these files (read from their
    headers): a pair's score depends on it a little, so re-scoring a pair of a data set needs
    the data set's side."""
    sides = []
    for path in paths:
        with Image.open(path) as im:
            sides.append(max(max(8, im.size[0] // factor), max(8, im.size[1] // factor)))
    return int(-(-max(sides) // 8) * 8)


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


def pair_scores(crops: list[np.ndarray], pairs: np.ndarray, side: int | None = None
                ) -> np.ndarray:
    """High-pass overlap correlation of each pair after phase-correlation alignment, on a
    canvas of ``side`` (default: fits the largest crop)."""
    side = side or _canvas_side(crops)
    shifts = _shifts(_spectra(crops, side), pairs, side)
    high = [c - ndimage.gaussian_filter(c, 3) for c in crops]
    return np.array([overlap_correlation(high[i], high[j], int(dy), int(dx))
                     for (i, j), (dy, dx) in zip(pairs, shifts, strict=True)])


#: how two images were linked, in the order ``linked_by`` lists them
KINDS = ("identical", "near-identical", "re-crop")


@dataclass
class SameCell:
    """What the linker found in one data set: the unit of every image, the links that made the
    units (``a`` < ``b`` image indices, ``kind`` from ``KINDS``, ``score`` of re-crops) and every
    file's SHA-256."""

    units: np.ndarray
    links: pd.DataFrame
    sha256: list[str]

    def table(self, paths, labels: np.ndarray) -> pd.DataFrame:
        """``same_cell.csv``: one row per image in a unit of 2+ images (path, label, unit,
        sha256 = its byte-identical set, copies = files with that hash, linked_by = the kinds of
        its links, conflict = its unit holds more than one label)."""
        labels = np.asarray(labels)
        size = np.bincount(self.units)[self.units]
        kinds = [set() for _ in self.units]
        for a, b, kind in zip(self.links["a"], self.links["b"], self.links["kind"], strict=True):
            kinds[a].add(kind)
            kinds[b].add(kind)
        conflict = np.zeros(len(self.units), bool)
        for members in conflicting_units(self.units, labels):
            conflict[members] = True
        hashes = pd.Series(self.sha256)
        frame = pd.DataFrame({
            "path": [str(p) for p in paths], "label": labels, "unit": self.units,
            "sha256": hashes, "copies": hashes.map(hashes.value_counts()).to_numpy(),
            "linked_by": ["|".join(k for k in KINDS if k in ks) for ks in kinds],
            "conflict": conflict})
        return frame[size > 1].sort_values(["unit", "path"], ignore_index=True)


def _identical_pairs(hashes: list[str]) -> np.ndarray:
    """(P, 2) pairs joining every file to the first earlier file with the same bytes."""
    first: dict[str, int] = {}
    pairs = [(first.setdefault(h, i), i) for i, h in enumerate(hashes)]
    return np.asarray([p for p in pairs if p[0] != p[1]], dtype=np.intp).reshape(-1, 2)


#: bump when a linking rule changes (here, in ``groups.near_duplicate_pairs`` or in the
#: constants above): stored links of an older version are not reused
LINKER_VERSION = 1


def stored_links_path(cache_dir: Path, fingerprint: str, size: int) -> Path:
    """Where ``cached_linked_units`` keeps one data set's links (decoded at ``size`` px)."""
    rules = f"v{LINKER_VERSION}-f{FACTOR}-c{MIN_CORRELATION}-o{MIN_OVERLAP}"
    return Path(cache_dir) / "same_cell" / f"{fingerprint}_s{size}_{rules}.npz"


def cached_linked_units(images: np.ndarray, paths, sha256, path: Path | None) -> SameCell:
    """``linked_units``, stored at ``path`` (``stored_links_path``) and loaded from it when its
    files' hashes are ``sha256``: linking reads every file at native resolution (about 25 s for
    the real copy), and a benchmark's twin runs and every rerun need the same answer."""
    stored = load_numpy(path) if path is not None else None
    if stored is not None and sha256 and list(stored["sha256"]) == list(sha256):
        links = pd.DataFrame({"a": stored["a"], "b": stored["b"],
                              "kind": stored["kind"].astype(object), "score": stored["score"]})
        return SameCell(stored["units"], links, list(sha256))
    cells = linked_units(images, paths, sha256)
    if path is not None:
        save_numpy(path, units=cells.units, a=cells.links["a"].to_numpy(np.intp),
                   b=cells.links["b"].to_numpy(np.intp),
                   kind=cells.links["kind"].to_numpy(str), score=cells.links["score"].to_numpy(),
                   sha256=np.asarray(cells.sha256, dtype=str))
    return cells


def linked_units(images: np.ndarray, paths, sha256=None) -> SameCell:
    """Units of the images: byte-identical files (SHA-256: ``sha256`` when the scan computed it,
    else hashed here), near-identical copies (``groups.near_duplicate_pairs`` on the decoded
    ``images``) and re-crops of one cell (the files ``paths``) are one unit (ids 0..U-1). A
    link between byte-identical files is ``identical`` whichever test also found it."""
    from .groups import merge_groups, near_duplicate_pairs

    hashes = list(sha256) if sha256 else file_hashes(paths)
    recrops, scores = same_cell_pairs(paths)
    identical, near = _identical_pairs(hashes), near_duplicate_pairs(images)
    parts = [(identical, "identical", np.full(len(identical), np.nan)),
             (near, "near-identical", np.full(len(near), np.nan)),
             (recrops, "re-crop", scores)]
    links = pd.concat([pd.DataFrame({"a": np.sort(p, axis=1)[:, 0], "b": np.sort(p, axis=1)[:, 1],
                                     "kind": kind, "score": s}) for p, kind, s in parts],
                      ignore_index=True)
    same = np.asarray(hashes)[links["a"]] == np.asarray(hashes)[links["b"]]
    links.loc[same, "kind"] = "identical"
    links = links.drop_duplicates(["a", "b", "kind"], ignore_index=True)
    units = merge_groups(np.arange(len(images)),
                         links[["a", "b"]].to_numpy(np.intp).reshape(-1, 2))
    return SameCell(units, links, hashes)


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


# --------------------------------------------------------------------------- threshold evidence

#: candidate pairs of the real SMIDS copy labelled by eye (``benchmark/same_cell_sample.py``
#: draws them), under ``studies/``
LABELLED_PAIRS = "labels/smids_same_cell_pairs.csv"


def labelled_pairs(path=None) -> pd.DataFrame:
    """The labelled sample: sha256_a, sha256_b, path_a, path_b, score, same_cell (yes / no /
    unsure), labelled_by, note."""
    from .toml import studies_dir

    return pd.read_csv(Path(path) if path else studies_dir() / LABELLED_PAIRS,
                       dtype={"same_cell": str})


def link_precision(pairs: pd.DataFrame, threshold: float = MIN_CORRELATION,
                   band: float = 0.1) -> pd.DataFrame:
    """Share of labelled pairs that are the same cell, scoring at or above ``threshold`` (the
    links made) and in the ``band`` just below it (the links missed), with a Clopper-Pearson 95%
    interval. ``unsure`` pairs are counted apart, not in the share."""
    from scipy.stats import binomtest

    rows = []
    below = threshold - band
    for name, low, high in ((f">= {threshold:g}", threshold, np.inf),
                            (f"[{below:g}, {threshold:g})", below, threshold)):
        part = pairs[(pairs["score"] >= low) & (pairs["score"] < high)]["same_cell"]
        same, decided = int((part == "yes").sum()), int(part.isin(["yes", "no"]).sum())
        ci = binomtest(same, decided).proportion_ci(method="exact") if decided else None
        rows.append({"scores": name, "same": same, "labelled": decided,
                     "unsure": int((part == "unsure").sum()),
                     "precision": same / decided if decided else np.nan,
                     "ci_low": ci.low if ci else np.nan, "ci_high": ci.high if ci else np.nan})
    return pd.DataFrame(rows)
