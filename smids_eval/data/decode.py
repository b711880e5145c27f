"""Decode image files into fixed-size RGB uint8 arrays, collecting every unreadable file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .scan import listing


def to_rgb(image: Image.Image) -> Image.Image:
    """Palette, grey, 16-bit and RGBA images become 8-bit RGB (alpha composited on white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        image = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def read_image(path: str | Path) -> Image.Image:
    """Open and fully load an image as RGB; raises OSError/ValueError for corrupt files."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


#: what ``decode_image`` raises for a corrupt, truncated, foreign or oversized file
DECODE_ERRORS = (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


def decode_image(path: str | Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One image file as (size, size, 3) uint8 RGB (bilinear resize) plus its original
    (width, height): the one decoding of the data set, far-OOD folders and predict.py, so a
    model sees new images exactly as it saw its training images."""
    im = read_image(path)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR)), im.size


def decode_files(root: Path, relpaths: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode files to (N, size, size, 3) uint8 plus their original (width, height).

    Raises one DataError that lists every corrupt or unreadable file.
    """
    images = np.empty((len(relpaths), size, size, 3), dtype=np.uint8)
    original = np.empty((len(relpaths), 2), dtype=np.int32)
    broken: list[str] = []
    for i, rel in enumerate(relpaths):
        path = root / rel
        try:
            images[i], original[i] = decode_image(path, size)
        except DECODE_ERRORS as exc:
            broken.append(f"{path} ({type(exc).__name__}: {exc})")
            continue
    if broken:
        raise DataError("corrupt or unreadable image files; re-export or remove them:\n"
                        + listing(broken))
    return images, original
