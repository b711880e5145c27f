"""Frozen-feature cache: run the frozen prefix once per image and augmentation view.

View 0 is the identity; views 1..K are pre-drawn augmentations (``smids_eval.augment``).
Activations are stored in bf16 as ``(N, V, C, h, w)`` tensors (one ``.pt`` per key, written
atomically) keyed by the data fingerprint, image size, channels, weights id, prefix depth, width,
view count and augmentation seed. Training then picks one random view per image per epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from .augment import DEFAULT_AUGMENT, AugmentConfig, augment, draw_params, to_channels, to_float
from .device import Runtime, compiled
from .io import save_torch

log = logging.getLogger(__name__)


def fingerprint_images(images: np.ndarray | torch.Tensor) -> str:
    """Content hash (sha256[:16]) of an image array, including its shape and dtype."""
    arr = np.ascontiguousarray(images.numpy() if isinstance(images, torch.Tensor) else images)
    h = hashlib.sha256(f"{arr.shape}{arr.dtype}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:16]


@dataclass
class LazyImages:
    """Images named by their content ``key``, made by ``make`` only when a cache lacks what is
    computed from them, and then once (shifted copies: their activations and descriptors are
    usually on disk already). Dropped with the value, so no set of copies outlives its use."""

    key: str
    make: Callable[[], np.ndarray]
    _images: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def named(cls, key: str, images: np.ndarray) -> LazyImages:
        """Images at hand under a known content key (a data set's fingerprint)."""
        return cls(key, lambda: images, images)

    @classmethod
    def of(cls, images: np.ndarray) -> LazyImages:
        """Images at hand, keyed by their pixels' fingerprint."""
        return cls.named(fingerprint_images(images), images)

    def get(self) -> np.ndarray:
        if self._images is None:
            self._images = self.make()
        return self._images


class CacheBusy(Exception):
    """Another process is computing this cache entry now (``FeatureCache.get(wait=False)``):
    do other work and come back for it."""


class FeatureCache:
    """A folder of cached tensors (prefix activations; acquisition descriptors under
    ``stem="descriptors"``); ``computed``/``loaded`` count what each call did."""

    def __init__(self, directory: str | Path | None, stem: str = "prefix"):
        self.directory = Path(directory) if directory is not None else None
        self.stem = stem
        self.computed = 0
        self.loaded = 0

    @staticmethod
    def digest(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    def path(self, key: dict) -> Path | None:
        return None if self.directory is None else self.directory / f"{self.stem}-{self.digest(key)}.pt"

    def get(self, key: dict, compute: Callable[[], torch.Tensor], wait: bool = True
            ) -> torch.Tensor:
        """Load the tensor stored under ``key`` or compute and store it (under a file lock:
        workers sharing the cache compute each entry once, the others wait and load it).
        ``wait=False`` raises ``CacheBusy`` instead of waiting for another process's
        computation, so that workers can build different entries at the same time."""
        path = self.path(key)
        if path is None:
            self.computed += 1
            return compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock = FileLock(str(path) + ".lock", timeout=-1 if wait else 0).acquire()
        except Timeout:
            raise CacheBusy(str(path)) from None
        with lock:
            return self._get(path, key, compute)

    def _get(self, path: Path, key: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                if stored.get("key") == key:
                    self.loaded += 1
                    return stored["features"]
                log.warning("feature cache %s holds another key; recomputing", path)
            except Exception as exc:  # truncated/corrupt file: recompute and overwrite
                log.warning("feature cache %s unreadable (%s); recomputing", path, exc)
        features = compute()
        self.computed += 1
        save_torch(path, {"key": key, "features": features})
        return features


@torch.inference_mode()
def extract_prefix(prefix: torch.nn.Module, images: torch.Tensor, channels: str, views: int,
                   seed: int, runtime: Runtime, batch_size: int = 64,
                   augment_cfg: AugmentConfig = DEFAULT_AUGMENT, progress: bool | None = None
                   ) -> torch.Tensor:
    """Prefix activations (N, views, C, h, w) in bf16 on CPU for uint8 images (N, 3, S, S).

    View 0 is the identity; view k ≥ 1 uses ``draw_params(N, seed, k)``.
    """
    prefix = compiled(prefix.eval(), runtime)
    n = images.shape[0]
    out = None
    bar = tqdm(total=n * views, desc="prefix features", unit="img", leave=False,
               disable=None if progress is None else not progress)
    for v in range(views):
        params = draw_params(n, seed, v) if v else None
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            x = to_float(runtime.to_device(images[sl]))
            if params is not None:
                x = augment(x, params[sl], augment_cfg)
            x = runtime.to_device(to_channels(x, channels))
            with runtime.autocast():
                y = prefix(x)
            y = y.to("cpu", torch.bfloat16).contiguous()
            if out is None:
                out = torch.empty((n, views, *y.shape[1:]), dtype=torch.bfloat16)
            out[sl, v] = y
            bar.update(y.shape[0])
    bar.close()
    return out
