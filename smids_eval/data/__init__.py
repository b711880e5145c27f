"""SMIDS data layer: read a class-folder data set, validate it, decode it once into a cache.

``load_dataset`` is the one entry point; ``python -m smids_eval.data --report`` prints a data report.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import CLASSES
from ..io import load_numpy
from . import cache
from .classes import canonical_class, class_slug
from .decode import decode_files, read_image
from .scan import exact_duplicates, fingerprint, scan_folder
from .source import DataSource, resolve_source

log = logging.getLogger(__name__)

__all__ = ["CLASSES", "Dataset", "DataSource", "canonical_class", "class_slug", "load_dataset",
           "load_folder", "read_image", "resolve_source"]


@dataclass
class Dataset:
    """A decoded data set: ``images[i]`` is ``paths[i]`` resized to ``size``×``size`` RGB."""

    images: np.ndarray          # (N, S, S, 3) uint8
    labels: np.ndarray          # (N,) int64, indices into CLASSES
    paths: list[str]            # posix paths relative to root
    original_sizes: np.ndarray  # (N, 2) width, height before resizing
    root: Path
    fingerprint: str
    source: DataSource
    duplicates: list[list[str]] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)   # of each file's bytes (scan); [] unknown

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.labels)

    def without(self, drop: np.ndarray) -> Dataset:
        """The data set minus the images at indices ``drop``. Its fingerprint is new (derived
        from the old one and the dropped paths), so no cache or run folder of the full set is
        reused for it."""
        keep = np.setdiff1d(np.arange(len(self)), np.asarray(drop, dtype=np.intp))
        dropped = "\n".join(sorted(self.paths[i] for i in np.asarray(drop, dtype=np.intp)))
        digest = hashlib.sha256(f"{self.fingerprint}|without|{dropped}".encode()).hexdigest()
        paths = [self.paths[i] for i in keep]
        kept = set(paths)
        groups = [[p for p in g if p in kept] for g in self.duplicates]
        return replace(self, images=self.images[keep], labels=self.labels[keep], paths=paths,
                       original_sizes=self.original_sizes[keep],
                       fingerprint=digest[:len(self.fingerprint)],
                       duplicates=[g for g in groups if len(g) > 1],
                       sha256=[self.sha256[i] for i in keep] if self.sha256 else [])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {c: int(n) for c, n in zip(CLASSES, counts, strict=True)}


def load_folder(root: str | Path, size: int, cache_dir: str | Path | None = None,
                source: DataSource | None = None) -> Dataset:
    """Scan, validate and decode ``root`` (decoding only on a cache miss)."""
    root = Path(root)
    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()
    files = scan_folder(root)
    cache.check_cache_location(cache_dir, root)
    fp = fingerprint(files)
    relpaths = [f.relpath for f in files]
    path = cache.decoded_path(cache_dir, fp, size)
    arrays = load_numpy(path)
    if arrays is None or list(arrays["paths"]) != relpaths:
        images, original = decode_files(root, relpaths, size)
        cache.stats["decoded_images"] += len(relpaths)
        arrays = {"images": images, "original_sizes": original, "paths": np.array(relpaths)}
        cache.store_decoded(path, **arrays)
    source = source or DataSource(root, "--data-dir", None)
    dups = exact_duplicates(files)
    if dups:
        log.warning("%d groups of byte-identical images in %s (they are kept in one group): %s",
                    len(dups), root, dups[:5])
    return Dataset(images=arrays["images"], labels=np.array([f.label for f in files], dtype=np.int64),
                   paths=relpaths, original_sizes=arrays["original_sizes"], root=root,
                   fingerprint=fp, source=source, duplicates=dups,
                   sha256=[f.sha256 for f in files])


def load_dataset(data_dir: str | Path | None = None, *, size: int = 64,
                 cache_dir: str | Path | None = None, synthetic_images: int = 1200,
                 synthetic_seed: int = 0, synthetic_style: str = "lab") -> Dataset:
    """Resolve the source (``--data-dir`` > ``SMIDS_DATA_DIR`` > synthetic), log it, load it."""
    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()
    source = resolve_source(data_dir, cache_dir, synthetic_images=synthetic_images,
                            synthetic_seed=synthetic_seed, synthetic_style=synthetic_style)
    log.info("data: %s", source.describe())
    return load_folder(source.root, size, cache_dir, source)
