"""Shared fixtures: tiny class-folder data sets, the real SMIDS copy (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_SMIDS = Path(os.environ.get("SMIDS_REAL_DATA_DIR",
                                 Path(__file__).resolve().parents[1].parent / "shared/data/smids"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache dir and no ambient data dir."""
    monkeypatch.setenv("SMIDS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SMIDS_DATA_DIR", raising=False)


@pytest.fixture
def real_smids() -> Path:
    if not (REAL_SMIDS / "Normal_Sperm").is_dir():
        pytest.skip(f"real SMIDS copy not found at {REAL_SMIDS} (set SMIDS_REAL_DATA_DIR)")
    return REAL_SMIDS


def write_image(path: Path, rng: np.random.Generator, mode: str = "RGB", size=(30, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    if mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return path


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """Three classes under unusual folder spellings, mixed formats and modes, 4 images each."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    layout = {"normal": ["a.png", "b.bmp", "c.jpg", "d.tif"],
              "Abnormal sperm": ["e.png", "f.png", "g.bmp", "h.png"],
              "non_sperm": ["i.png", "j.png", "k.png", "l.jpeg"]}
    modes = ["RGB", "L", "P", "RGBA"]
    for folder, names in layout.items():
        for name, mode in zip(names, modes, strict=True):
            m = "RGB" if name.endswith((".jpg", ".jpeg")) and mode in ("P", "RGBA") else mode
            write_image(root / folder / name, rng, m)
    return root


def decoded_synthetic(folder: Path, n_images: int, seed: int, size: int = 32, style: str = "lab"):
    """A generated synthetic set decoded to size×size: (manifest DataFrame, uint8 images)."""
    import pandas as pd

    from smids_eval.data.synthetic import SPEC, generate

    root = generate(folder / "smids", n_images=n_images, seed=seed, size_range=(size, size + 16),
                    style=style)
    manifest = pd.read_csv(root / SPEC.manifest_name)
    images = np.stack([np.asarray(Image.open(root / p).convert("RGB").resize((size, size)))
                       for p in manifest["path"]])
    return manifest, images
