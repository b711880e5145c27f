"""The run's synthetic acquisition shifts, made once: a seeded sample of the data set (the
*panel*) and its shifted copies at every shift and severity.

Each outer fold of each repeat evaluates the panel images that lie in its held-out fold. A
held-out image's shifted copy is therefore the same in every repeat, and repeats, twins and
worker processes share one set of copies, their prefix activations and their acquisition
descriptors (cached on disk under ``set_key``, so a copy is made only when they are missing)
instead of shifting each fold's images again: with re-drawn folds (``--repeats``), shifting per
fold cost a third of the run."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .shifts import SHIFTS, SHIFTS_VERSION, apply_shift, shift_key


@dataclass(frozen=True)
class ShiftPanel:
    """``index``: sorted indices of the panel's images in the data set named ``data_key``
    (content fingerprint and image size); copies are drawn with ``seed``."""

    index: np.ndarray
    severities: tuple[int, ...]
    seed: int
    data_key: str

    @classmethod
    def draw(cls, n_images: int, per_fold: int, outer_folds: int, severities, seed: int,
             data_key: str = "") -> ShiftPanel:
        """``per_fold × outer_folds`` images (all when fewer), so that an outer fold holds
        ``per_fold`` of them on average; none when there is nothing to shift."""
        n = min(per_fold * outer_folds, n_images) if severities else 0
        rng = np.random.default_rng(seed)
        return cls(np.sort(rng.choice(n_images, n, replace=False)), tuple(severities), seed,
                   data_key)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def sets(self) -> dict[str, tuple[str, int]]:
        """``{"<shift>_s<k>": (shift, severity)}``, every shift at every severity."""
        if not len(self):
            return {}
        return {shift_key(n, s): (n, s) for n in SHIFTS for s in self.severities}

    @property
    def n_copies(self) -> int:
        """Shifted images the panel makes: images × shifts × severities."""
        return len(self) * len(self.sets)

    def positions(self, test_idx: np.ndarray) -> np.ndarray:
        """Positions in the panel of its images that lie in ``test_idx`` (a held-out fold)."""
        return np.flatnonzero(np.isin(self.index, test_idx))

    def set_key(self, name: str) -> str:
        """What one set of copies is made from (data, images, seed, shift code): the cache
        key of its activations and descriptors, known without making the copies."""
        h = hashlib.sha256(f"{self.data_key}|{self.seed}|{name}|v{SHIFTS_VERSION}|".encode())
        h.update(np.ascontiguousarray(self.index, dtype=np.int64).tobytes())
        return f"panel-{h.hexdigest()[:16]}"

    def copy(self, images: np.ndarray, name: str) -> np.ndarray:
        """The set ``name`` of shifted copies of the panel's images (``images``: the data
        set's)."""
        shift, severity = self.sets[name]
        return apply_shift(images[self.index], shift, severity, self.seed)
