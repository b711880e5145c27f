"""On-disk cache of decoded images keyed by the data set's content fingerprint and the size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import platformdirs

from ..errors import DataError
from ..io import save_numpy

#: Decode counter, so tests can check that a second load hits the cache.
stats = {"decoded_images": 0}


def default_cache_dir() -> Path:
    """``SMIDS_CACHE_DIR`` or the user cache dir (never inside the data folder)."""
    return Path(os.environ.get("SMIDS_CACHE_DIR") or platformdirs.user_cache_dir("smids-eval"))


def check_cache_location(cache_dir: Path, data_root: Path) -> None:
    cache, data = cache_dir.resolve(), data_root.resolve()
    if cache == data or data in cache.parents:
        raise DataError(f"cache dir {cache_dir} lies inside the data folder {data_root}; the data "
                        "folder must stay read-only: set --cache-dir or SMIDS_CACHE_DIR elsewhere")


def decoded_path(cache_dir: Path, fingerprint: str, size: int) -> Path:
    return cache_dir / "decoded" / f"{fingerprint}_s{size}.npz"


def store_decoded(path: Path, **arrays: np.ndarray) -> None:
    save_numpy(path, **arrays)
