"""Sperm crops as another lab would acquire them: uint8 (N, S, S, 3) RGB, in memory.

For out-of-distribution checks that are harder than far-OOD textures: the objects are the same
spermatozoa, heads, cells and debris that :mod:`smids_eval.data.synthetic` draws (its shape
helpers are reused unchanged, so its own output stays bit-identical), but stain, illumination,
magnification, sharpness and noise lie outside the range of every synthetic donor:

``stained_heads``
    Papanicolaou / Diff-Quik look: strong purple-pink stain on a bright, almost white and
    neutral background (synthetic donor backgrounds have HSV saturation >= 0.18 and are
    darker), ~3x higher magnification (the head fills much of the crop, the tail is cut by the
    crop edge), no blur plus a little sharpening, low noise. Sperm only (normal and abnormal
    heads).
``grey_phase``
    Unstained phase contrast: dark neutral-grey background, grey objects with a bright halo,
    ~0.5x magnification (small objects with background around them), heavy grain. All shape
    kinds (sperm, cells, debris, empty fields).

Registry ``FOREIGN_LABS``: name -> :class:`ForeignLab`; a new lab is one instance plus one line.
Same ``(n, size, seed, lab)`` -> identical array.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .synthetic import SPEC, _background, _Donor, _draw_non_sperm, _draw_sperm

# ----------------------------------------------------------------------------- drawing


class _Recorder:
    """Stands in for ``ImageDraw.Draw``: records the shapes that the synthetic drawing helpers
    emit, so they can be replayed at another magnification and centre."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[float, float]], dict]] = []

    def line(self, xy, fill=None, width=1):
        self.calls.append(("line", list(xy), {"fill": fill, "width": width}))

    def polygon(self, xy, fill=None, outline=None):
        self.calls.append(("polygon", list(xy), {"fill": fill}))


def _replay(calls, size: int, scale: float, centre: tuple[float, float]) -> np.ndarray:
    """Draw recorded shapes on a ``size``×``size`` mask, zoomed by ``scale`` about ``centre``
    (which lands in the middle of the crop); float mask in [0, 1]."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = centre
    for op, xy, kw in calls:
        pts = [(size / 2 + scale * (x - cx), size / 2 + scale * (y - cy)) for x, y in xy]
        if op == "line":
            draw.line(pts, fill=kw["fill"], width=max(1, round(kw["width"] * scale)))
        else:
            draw.polygon(pts, fill=kw["fill"])
    return np.asarray(mask, dtype=np.float32) / 255.0


def _shapes(kind: str, size: int, rng: np.random.Generator) -> _Recorder:
    recorder = _Recorder()
    draw = _draw_sperm if kind in _SPERM_KINDS else _draw_non_sperm
    draw(recorder, kind, size, rng)
    return recorder


def _first_polygon_centre(calls) -> tuple[float, float] | None:
    """Centroid of the first drawn polygon (the head for sperm), None without polygons."""
    for op, xy, _ in calls:
        if op == "polygon":
            pts = np.asarray(xy)
            return float(pts[:, 0].mean()), float(pts[:, 1].mean())
    return None


_SPERM_KINDS = frozenset(SPEC.shape_kinds["Normal_Sperm"] + SPEC.shape_kinds["Abnormal_Sperm"])
_ALL_KINDS = tuple(k for kinds in SPEC.shape_kinds.values() for k in kinds)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _field(rng: np.random.Generator, colour: np.ndarray, amplitude: float, size: int) -> np.ndarray:
    """Low-frequency illumination field around ``colour`` via the synthetic background helper."""
    donor = _Donor(background=colour, stain=colour, gain=1.0, blur=0.0, noise=0.0,
                   field_amplitude=amplitude, class_mix=np.ones(1))
    return _background(rng, donor, size, size)


def _finish(image: np.ndarray, rng: np.random.Generator, noise: float,
            blur: float = 0.0, sharpen: bool = False) -> np.ndarray:
    """[0, 1] float image -> blurred/sharpened, grainy uint8."""
    pil = Image.fromarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")
    if blur > 0.05:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
    if sharpen:
        pil = pil.filter(ImageFilter.UnsharpMask(radius=1, percent=80, threshold=2))
    pixels = np.asarray(pil, dtype=np.float32)
    pixels = pixels + rng.normal(0, noise, pixels.shape).astype(np.float32)
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- labs

def _stained_heads(size: int, rng: np.random.Generator) -> np.ndarray:
    kinds = sorted(_SPERM_KINDS)
    kind = str(rng.choice(kinds))
    calls = _shapes(kind, size, rng).calls
    head = _first_polygon_centre(calls)
    scale = float(rng.uniform(2.6, 3.4))
    jitter = rng.uniform(-0.04, 0.04, 2) * size / scale
    alpha = _replay(calls, size, scale, (head[0] + jitter[0], head[1] + jitter[1]))[..., None]
    background = _field(rng, _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.04),
                                  rng.uniform(0.95, 1.0)), 0.01, size)
    stain = _hsv(rng.uniform(0.78, 0.95), rng.uniform(0.6, 0.85), rng.uniform(0.4, 0.62))
    image = background * (1 - alpha) + stain * alpha
    return _finish(image, rng, noise=float(rng.uniform(0.5, 2.0)), sharpen=True)


def _grey_phase(size: int, rng: np.random.Generator) -> np.ndarray:
    kind = str(rng.choice(_ALL_KINDS))
    calls = _shapes(kind, size, rng).calls
    scale = float(rng.uniform(0.42, 0.6))
    alpha = _replay(calls, size, scale, (size / 2, size / 2))
    # halo: a bright ring just outside the (phase-dark) objects
    spread = Image.fromarray((alpha * 255).astype(np.uint8), "L").filter(
        ImageFilter.GaussianBlur(max(1.0, size / 60)))
    halo = np.clip(np.asarray(spread, dtype=np.float32) / 255.0 * 2.5 - alpha * 2.0, 0, 1)
    grey = float(rng.uniform(0.1, 0.2))
    background = _field(rng, np.full(3, grey, np.float32), 0.03, size)
    background = background.mean(axis=-1, keepdims=True)  # neutral grey: no colour tint
    body = float(rng.uniform(0.3, 0.45))
    image = background * (1 - alpha[..., None]) + body * alpha[..., None]
    image = image + float(rng.uniform(0.45, 0.65)) * halo[..., None]
    image = np.repeat(image, 3, axis=-1)
    return _finish(image, rng, noise=float(rng.uniform(16.0, 26.0)),
                   blur=float(rng.uniform(0.3, 0.9)) * size / 190)


@dataclass(frozen=True)
class ForeignLab:
    """One foreign acquisition: ``draw(size, rng) -> uint8 (size, size, 3)``."""

    name: str
    description: str
    draw: Callable[[int, np.random.Generator], np.ndarray]


#: name -> ForeignLab
FOREIGN_LABS: dict[str, ForeignLab] = {
    "stained_heads": ForeignLab(
        "stained_heads", "purple-pink Papanicolaou/Diff-Quik stain, white background, ~3x "
        "magnification (tail cut), sharp, low noise", _stained_heads),
    "grey_phase": ForeignLab(
        "grey_phase", "unstained phase contrast: dark grey background, grey objects with bright "
        "halos, ~0.5x magnification, heavy grain", _grey_phase),
}


def foreign_lab_images(n: int, size: int, seed: int = 0,
                       lab: str = "stained_heads") -> np.ndarray:
    """``n`` crops of ``size``×``size`` as lab ``lab`` (a key of ``FOREIGN_LABS``) would
    acquire them: uint8 (n, size, size, 3); deterministic for ``(n, size, seed, lab)``, and
    image ``i`` does not depend on ``n``."""
    if lab not in FOREIGN_LABS:
        raise ValueError(f"unknown foreign lab {lab!r}; choose one of {sorted(FOREIGN_LABS)}")
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    salt = zlib.crc32(lab.encode())
    draw = FOREIGN_LABS[lab].draw
    images = [draw(size, np.random.default_rng([seed, salt, i])) for i in range(n)]
    if not images:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack(images).astype(np.uint8)
