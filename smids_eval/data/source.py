"""Where the images come from: ``--data-dir`` > ``SMIDS_DATA_DIR`` > the synthetic default."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SYNTHETIC_MANIFEST = "donors.csv"


@dataclass(frozen=True)
class DataSource:
    root: Path
    origin: str             # "--data-dir", "SMIDS_DATA_DIR" or "synthetic"
    manifest: Path | None   # a donor manifest shipped with the data (the synthetic set has one)

    def describe(self) -> str:
        if self.origin == "synthetic":
            return f"synthetic SMIDS-like set at {self.root} (no --data-dir or SMIDS_DATA_DIR given)"
        return f"{self.root} (from {self.origin})"


def synthetic_root(cache_dir: Path, n_images: int, seed: int, style: str = "lab") -> Path:
    """Generate the synthetic set once into the cache (atomically: temp folder + rename); the
    folder name holds every argument, so two styles or sizes never share a folder."""
    from filelock import FileLock

    from .synthetic import generate

    root = cache_dir / "synthetic" / f"smids-synthetic-{style}-n{n_images}-seed{seed}"
    if (root / SYNTHETIC_MANIFEST).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # workers starting together on a fresh cache: one generates, the others wait and reuse it
    with FileLock(str(root.parent / f".{root.name}.lock")):
        if (root / SYNTHETIC_MANIFEST).is_file():
            return root
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root.parent))
        try:
            generate(tmp, n_images=n_images, seed=seed, style=style)
            if root.exists():  # a half-made folder from an interrupted run
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def resolve_source(data_dir: str | Path | None, cache_dir: Path, *, synthetic_images: int = 1200,
                   synthetic_seed: int = 0, synthetic_style: str = "lab") -> DataSource:
    """Pick the data folder in the documented order and say which one was used."""
    if data_dir:
        origin, root = "--data-dir", Path(data_dir)
    elif os.environ.get("SMIDS_DATA_DIR"):
        origin, root = "SMIDS_DATA_DIR", Path(os.environ["SMIDS_DATA_DIR"])
    else:
        root = synthetic_root(cache_dir, synthetic_images, synthetic_seed, synthetic_style)
        return DataSource(root, "synthetic", root / SYNTHETIC_MANIFEST)
    manifest = root / SYNTHETIC_MANIFEST
    return DataSource(root, origin, manifest if manifest.is_file() else None)
