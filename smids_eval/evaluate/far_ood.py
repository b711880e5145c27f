"""Far-OOD image sets as uint8 (N, S, S, 3): seeded procedural textures, crops of
scikit-learn's bundled natural photos, and any user folder (``--ood-dir``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..data.decode import DECODE_ERRORS, decode_image
from ..data.scan import IMAGE_SUFFIXES, image_files
from ..errors import DataError


def _texture(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    colours = rng.uniform(0, 255, (2, 3))
    if kind == 0:    # coloured noise
        return rng.uniform(0, 255, (size, size, 3))
    if kind == 1:    # oriented stripes
        theta, freq = rng.uniform(0, np.pi), rng.uniform(3, 12)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)))
    elif kind == 2:  # checkerboard
        cells = rng.integers(2, 9)
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float64)
    else:            # linear gradient
        theta = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(theta) + yy * np.sin(theta)
        t = (t - t.min()) / max(np.ptp(t), 1e-9)
    return t[..., None] * colours[0] + (1 - t[..., None]) * colours[1]


def procedural_textures(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Noise, stripes, checkerboards and gradients in random colours, cycled in that order."""
    rng = np.random.default_rng(seed)
    return np.stack([_texture(i % 4, size, rng) for i in range(n)]).round().astype(np.uint8)


def natural_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random square crops of ``sklearn.datasets.load_sample_images()`` resized to ``size``."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(size, h, w), min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side])
        out.append(np.asarray(crop.resize((size, size), Image.BILINEAR)))
    return np.stack(out).astype(np.uint8)


def far_ood_sets(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``{"textures": ..., "natural": ...}``, each (n, size, size, 3) uint8."""
    return {"textures": procedural_textures(n, size, seed),
            "natural": natural_crops(n, size, seed)}


class FolderImages(NamedTuple):
    images: np.ndarray          # (N, size, size, 3) uint8
    paths: list[Path]           # readable files, in the order of ``images``
    skipped: list[str]          # "path: reason" for each unreadable file


def load_folder(path, size: int) -> FolderImages:
    """All images under ``path`` (``data.scan.image_files``: recursive, sorted, hidden files
    skipped), decoded exactly like the data set (``data.decode.decode_image``). Unreadable files
    are skipped with a warning; DataError if none is readable."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"OOD folder {root} does not exist or is not a folder")
    images, paths, skipped = [], [], []
    for f in image_files(root):
        try:
            images.append(decode_image(f, size)[0])
            paths.append(f)
        except DECODE_ERRORS as exc:
            skipped.append(f"{f}: {exc}")
    if not images:
        listed = "\n  ".join(skipped) if skipped else "(no files with suffix " \
            f"{', '.join(sorted(IMAGE_SUFFIXES))})"
        raise DataError(f"no readable image in OOD folder {root}:\n  {listed}")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable file(s) in {root}: "
                      + "; ".join(skipped), stacklevel=2)
    return FolderImages(np.stack(images).astype(np.uint8), paths, skipped)
