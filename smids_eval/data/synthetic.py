"""Synthetic SMIDS-like crops: the embedded default data set and the test fixture.

A pipeline demonstration, not a model of real sperm images. Crops are drawn with PIL on a
stained-smear background and saved in the SMIDS layout (``<out>/<class>/*.bmp``) with a donor
manifest ``<out>/donors.csv`` (``path,donor``).

Two styles (``STYLES``):

* ``"lab"`` (the default): the class is in the shape (normal = smooth oval head of near-constant
  size and a straight tail; abnormal = tapered, pear-shaped, round, oversized, amorphous or double
  heads, often with vacuoles, or oval heads with a hairpin-bent or coiled tail and a cytoplasmic
  droplet; non-sperm = round cells, debris or empty fields without a tail). Donors share one stain
  protocol with mild, overlapping differences (hue, brightness, blur, noise, with per-image
  jitter of the same size) and near-balanced class mixes with mild skew, so grouping by donor
  costs a little optimism, as in a lab, but donor identity does not predict the class. Faint
  smear specks make every field distinct (similar cells are not linked as re-crops of one cell).
* ``"legacy"``: the earlier generator (donor hues in separate slots, Dirichlet(1.2) class mixes:
  donor identity predicts the class). Kept so the golden regression test can replay a run made
  before the change, and as a fixture with recoverable acquisition groups; not a demonstration.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .. import CLASSES
from ..errors import ConfigError, DataError
from ..io import write_csv


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`generate` produces by default."""

    classes: tuple[str, ...] = CLASSES
    n_images: int = 1200
    n_donors: int = 17
    size_range: tuple[int, int] = (120, 260)
    suffix: str = ".bmp"
    manifest_name: str = "donors.csv"
    manifest_columns: tuple[str, str] = ("path", "donor")
    shape_kinds: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "Normal_Sperm": ("oval_head",),
        "Abnormal_Sperm": ("tapered_head", "pyriform_head", "round_head", "amorphous_head",
                           "double_head", "bent_tail", "coiled_tail"),
        "Non-Sperm": ("debris", "round_cell", "clump", "empty_field"),
    })
    lab_shape_kinds: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "Normal_Sperm": ("oval_head",),
        "Abnormal_Sperm": ("tapered_head", "pyriform_head", "round_head", "amorphous_head",
                           "double_head", "macro_head", "bent_tail", "coiled_tail"),
        "Non-Sperm": ("debris", "round_cell", "empty_field"),
    })
    styles: tuple[str, ...] = ("lab", "legacy")
    lab_class_concentration: float = 12.0   # Dirichlet alpha per class: near balanced, mild skew


SPEC = SyntheticSpec()
STYLES = SPEC.styles


def check_style(style: str) -> None:
    """A ConfigError naming the allowed styles when ``style`` is not one of them."""
    if style not in STYLES:
        raise ConfigError(f"synthetic_style = {style!r} is unknown; use one of {list(STYLES)}")


def donor_name(donor: int) -> str:
    """Manifest name of donor number ``donor`` (1-based), e.g. ``donor_03``."""
    return f"donor_{donor:02d}"


# ----------------------------------------------------------------------------- donors

@dataclass(frozen=True)
class _Donor:
    background: np.ndarray      # RGB in [0, 1]
    stain: np.ndarray           # RGB in [0, 1], colour of heads / cells
    gain: float                 # illumination multiplier
    blur: float                 # Gaussian blur radius at a 190 px crop
    noise: float                # grain standard deviation (0-255 units)
    field_amplitude: float      # strength of the low-frequency colour field
    class_mix: np.ndarray       # probabilities over CLASSES
    kind_mix: dict | None = None  # lab style: the donor's own mix of forms within each class


def _sample_legacy_donors(rng: np.random.Generator, n_donors: int) -> list[_Donor]:
    """Legacy donors: hues spread evenly so donor colours differ clearly, skewed class mixes."""
    hues = (rng.permutation(n_donors) + rng.uniform(0.2, 0.8, n_donors)) / n_donors
    donors = []
    for hue in hues:
        sat, val = rng.uniform(0.18, 0.45), rng.uniform(0.62, 0.9)
        background = np.array(colorsys.hsv_to_rgb(hue, sat, val))
        stain_hue = (hue + rng.uniform(-0.08, 0.08)) % 1.0
        stain = np.array(colorsys.hsv_to_rgb(stain_hue, rng.uniform(0.45, 0.8),
                                             rng.uniform(0.2, 0.42)))
        donors.append(_Donor(
            background=background, stain=stain,
            gain=float(rng.uniform(0.8, 1.15)), blur=float(rng.uniform(0.0, 2.2)),
            noise=float(rng.uniform(1.5, 14.0)), field_amplitude=float(rng.uniform(0.02, 0.12)),
            class_mix=rng.dirichlet(np.full(len(CLASSES), 1.2)),
        ))
    return donors


def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val))


def _sample_lab_donors(rng: np.random.Generator, n_donors: int) -> list[_Donor]:
    """Donors of one lab: one stain protocol with mild, overlapping variation around it, and
    near-balanced class mixes (Dirichlet with a large concentration)."""
    alpha = np.full(len(CLASSES), SPEC.lab_class_concentration)
    return [_Donor(
        background=_hsv(0.88 + rng.normal(0, 0.015), rng.uniform(0.14, 0.22),
                        rng.uniform(0.76, 0.84)),
        stain=_hsv(0.72 + rng.normal(0, 0.015), rng.uniform(0.48, 0.6), rng.uniform(0.26, 0.34)),
        gain=float(rng.uniform(0.95, 1.05)), blur=float(rng.uniform(0.4, 1.0)),
        noise=float(rng.uniform(2.5, 5.0)), field_amplitude=float(rng.uniform(0.02, 0.04)),
        class_mix=rng.dirichlet(alpha),
        kind_mix={c: rng.dirichlet(np.full(len(k), 0.3)) for c, k in SPEC.lab_shape_kinds.items()},
    ) for _ in range(n_donors)]


def _jitter(donor: _Donor, rng: np.random.Generator) -> _Donor:
    """Per-image acquisition variation as large as the between-donor one (lab style), so donors
    overlap instead of forming clusters."""
    return dataclasses.replace(
        donor,
        background=np.clip(donor.background + rng.normal(0, 0.015, 3), 0, 1),
        stain=np.clip(donor.stain + rng.normal(0, 0.015, 3), 0, 1),
        gain=donor.gain * float(rng.uniform(0.96, 1.04)),
        blur=max(0.0, donor.blur + float(rng.normal(0, 0.25))),
        noise=donor.noise * float(rng.uniform(0.8, 1.25)))


def _images_per_donor(rng: np.random.Generator, n_images: int, n_donors: int) -> np.ndarray:
    """Unequal donor sizes, at least one image each."""
    shares = rng.dirichlet(np.full(n_donors, 4.0))
    return 1 + rng.multinomial(n_images - n_donors, shares)


def _assign_classes(rng: np.random.Generator, donor_of: np.ndarray,
                    donors: list[_Donor]) -> np.ndarray:
    """Class index of every image from its donor's class mix; every class appears at least once
    (when there are enough images), so the class folders are never empty."""
    n_classes = len(CLASSES)
    draws = rng.random(donor_of.size)
    cumulative = np.cumsum([d.class_mix for d in donors], axis=1)[donor_of]
    class_of = np.minimum((draws[:, None] > cumulative).sum(axis=1), n_classes - 1)
    for missing in np.setdiff1d(np.arange(n_classes), class_of):
        counts = np.bincount(class_of, minlength=n_classes)
        spare = np.flatnonzero(counts[class_of] > 1)
        if spare.size:
            class_of[spare[0]] = missing
    return class_of


# ----------------------------------------------------------------------------- shapes

def _transform(points: np.ndarray, angle: float, centre: tuple[float, float]) -> list[tuple]:
    """Rotate local (x, y) points by ``angle`` and move them to ``centre``."""
    c, s = math.cos(angle), math.sin(angle)
    x = points[:, 0] * c - points[:, 1] * s + centre[0]
    y = points[:, 0] * s + points[:, 1] * c + centre[1]
    return list(zip(x.tolist(), y.tolist(), strict=True))


def _ellipse(a: float, b: float, dx: float = 0.0, dy: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([dx + a * np.cos(t), dy + b * np.sin(t)], axis=1)


def _amorphous(rx: float, ry: float, wobble: tuple[float, float],
               rng: np.random.Generator) -> np.ndarray:
    """An irregular head: an ellipse whose radius wobbles at 2, 3 and 5 cycles per turn."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    r = 1 + sum(rng.uniform(*wobble) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
                for k in (2, 3, 5))
    return np.stack([rx * r * np.cos(t), ry * r * np.sin(t)], axis=1)


@dataclass(frozen=True)
class _HeadLook:
    """Head forms of one style, as multiples of the half head length ``a``."""

    tapered: tuple[float, float]                  # semi-axes
    pyriform: tuple[float, float, float, float]   # semi-axes; width × (k0 + k1 cos t)
    round: float                                  # radius
    macro: tuple[float, float] | None             # semi-axes (lab style only)
    amorphous: tuple[float, float, tuple[float, float]]  # semi-axes, wobble range
    double: tuple[float, float]                   # offset of the two heads (dx, dy)


_LEGACY_HEADS = _HeadLook(tapered=(1.15, 0.36), pyriform=(1.0, 0.75, 0.55, 0.45), round=0.75,
                          macro=None, amorphous=(1.05, 0.7, (0.08, 0.22)), double=(0.0, 0.6))
# the lab style's abnormal forms are exaggerated enough to show at 64 px
_LAB_HEADS = _HeadLook(tapered=(1.4, 0.25), pyriform=(1.2, 1.0, 0.35, 0.65), round=1.0,
                       macro=(1.6, 1.0), amorphous=(1.1, 0.8, (0.15, 0.3)), double=(0.3, 0.75))


def _head_outlines(kind: str, length: float, rng: np.random.Generator,
                   look: _HeadLook = _LEGACY_HEADS) -> list[np.ndarray]:
    """Head polygons in local coordinates (front towards +x, centred on the origin)."""
    a = length / 2
    if kind == "tapered_head":
        return [_ellipse(a * look.tapered[0], a * look.tapered[1])]
    if kind == "pyriform_head":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        fx, fy, k0, k1 = look.pyriform
        return [np.stack([a * fx * np.cos(t), a * fy * np.sin(t) * (k0 + k1 * np.cos(t))],
                         axis=1)]
    if kind == "round_head":
        return [_ellipse(a * look.round, a * look.round)]
    if kind == "macro_head" and look.macro is not None:
        return [_ellipse(a * look.macro[0], a * look.macro[1])]
    if kind == "amorphous_head":
        fx, fy, wobble = look.amorphous
        return [_amorphous(a * fx, a * fy, wobble, rng)]
    if kind == "double_head":
        dx, dy = look.double
        return [_ellipse(a, a * 0.6, dx=a * dx, dy=-a * dy),
                _ellipse(a, a * 0.6, dx=a * dx, dy=a * dy)]
    return [_ellipse(a, a * 0.62)]  # oval head (normal, bent tail, coiled tail)


def _lab_head_outlines(kind: str, length: float, rng: np.random.Generator) -> list[np.ndarray]:
    return _head_outlines(kind, length, rng, _LAB_HEADS)


def _tail_points(kind: str, start: float, length: float, rng: np.random.Generator) -> np.ndarray:
    """Tail centre line from the head base (x = ``start``) running towards -x."""
    u = np.linspace(0, 1, 40)
    if kind == "coiled_tail":
        turns = rng.uniform(1.2, 2.5)
        radius = length * 0.12 * (1 - 0.6 * u)
        phi = 2 * np.pi * turns * u
        return np.stack([start - radius * np.sin(phi) - length * 0.1 * u,
                         radius * (1 - np.cos(phi))], axis=1)
    amplitude = length * rng.uniform(0.01, 0.04)
    wave = np.stack([start - length * u,
                     amplitude * u * np.sin(2 * np.pi * rng.uniform(1.0, 2.5) * u)], axis=1)
    if kind == "bent_tail":
        knee = int(rng.integers(8, 20))
        bend = rng.choice([-1, 1]) * rng.uniform(0.7, 1.9)
        c, s = math.cos(bend), math.sin(bend)
        rel = wave[knee:] - wave[knee]
        wave[knee:] = wave[knee] + rel @ np.array([[c, s], [-s, c]])
    return wave


@dataclass(frozen=True)
class _CellLook:
    """How one style draws a spermatozoon: sizes as fractions of the crop, grey-level ranges,
    and its head-outline and tail functions."""

    length: tuple[float, float]
    jitter: float
    width_divisor: float
    tail_length: tuple[float, float]
    tail_fill: tuple[int, int]
    head_fill: tuple[int, int]
    acrosome_fill: tuple[int, int]
    heads: object
    tails: object
    round_heads_lack_acrosome: bool


def _draw_cell(draw: ImageDraw.ImageDraw, kind: str, size: int, rng: np.random.Generator,
               look: _CellLook) -> tuple[float, float, tuple]:
    """Tail, midpiece, head(s) and acrosome of one spermatozoon at a random place and angle;
    returns (head length, angle, centre) for what a style adds on top."""
    length = size * rng.uniform(*look.length)
    centre = tuple(size / 2 + rng.uniform(-look.jitter, look.jitter, 2) * size)
    angle = rng.uniform(0, 2 * np.pi)
    width = max(1, round(size / look.width_divisor))
    tail = look.tails(kind, -length / 2, size * rng.uniform(*look.tail_length), rng)
    draw.line(_transform(tail, angle, centre), fill=int(rng.integers(*look.tail_fill)), width=width)
    draw.line(_transform(tail[:8], angle, centre), fill=210, width=max(width + 1, round(length / 5)))
    for outline in look.heads(kind, length, rng):
        draw.polygon(_transform(outline, angle, centre), fill=int(rng.integers(*look.head_fill)))
    if not (look.round_heads_lack_acrosome and kind == "round_head"):  # globozoospermia
        acrosome = _ellipse(length * 0.22, length * 0.2, dx=length * 0.22)
        draw.polygon(_transform(acrosome, angle, centre),
                     fill=int(rng.integers(*look.acrosome_fill)))
    return length, angle, centre


_LEGACY_LOOK = _CellLook(length=(0.14, 0.2), jitter=0.15, width_divisor=110,
                         tail_length=(0.45, 0.7), tail_fill=(110, 170), head_fill=(215, 256),
                         acrosome_fill=(150, 195), heads=_head_outlines, tails=_tail_points,
                         round_heads_lack_acrosome=False)


def _draw_sperm(draw: ImageDraw.ImageDraw, kind: str, size: int, rng: np.random.Generator):
    """Head, acrosome, midpiece and tail of one spermatozoon at a random place and angle."""
    _draw_cell(draw, kind, size, rng, _LEGACY_LOOK)


def _lab_tail_points(kind: str, start: float, length: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Lab-style tails: a bent tail folds back sharply (a hairpin), a coiled one winds into wide
    loops beside the head, others as ``_tail_points``."""
    u = np.linspace(0, 1, 40)
    if kind == "coiled_tail":
        radius = length * rng.uniform(0.12, 0.16)
        phi = 2 * np.pi * rng.uniform(1.5, 2.5) * u
        return np.stack([start - radius * np.sin(phi) - length * 0.15 * u,
                         radius * (1 - np.cos(phi))], axis=1)
    if kind != "bent_tail":
        return _tail_points(kind, start, length, rng)
    tail = np.stack([start - length * u, np.zeros_like(u)], axis=1)
    knee = int(rng.integers(10, 22))
    bend = rng.choice([-1, 1]) * rng.uniform(2.2, 2.9)
    c, s = math.cos(bend), math.sin(bend)
    tail[knee:] = tail[knee] + (tail[knee:] - tail[knee]) @ np.array([[c, s], [-s, c]])
    return tail


_LAB_LOOK = _CellLook(length=(0.29, 0.33), jitter=0.08, width_divisor=35, tail_length=(0.4, 0.55),
                      tail_fill=(130, 180), head_fill=(225, 256), acrosome_fill=(150, 190),
                      heads=_lab_head_outlines, tails=_lab_tail_points,
                      round_heads_lack_acrosome=True)


def _draw_lab_sperm(draw: ImageDraw.ImageDraw, kind: str, size: int, rng: np.random.Generator):
    """A near-centred spermatozoon of near-constant size (normal heads are uniform) with a tail
    thick enough to survive 64 px; half of the abnormal heads carry vacuoles."""
    length, angle, centre = _draw_cell(draw, kind, size, rng, _LAB_LOOK)
    if kind in ("bent_tail", "coiled_tail"):  # a retained cytoplasmic droplet at the midpiece
        droplet = _ellipse(length * 0.25, length * 0.2, dx=-length * 0.75, n=16)
        draw.polygon(_transform(droplet, angle, centre), fill=int(rng.integers(170, 215)))
    if kind != "oval_head" and rng.random() < 0.75:
        for _ in range(int(rng.integers(2, 5))):
            spot = _ellipse(*(length * rng.uniform(0.06, 0.1, 2)),
                            *(length * rng.uniform(-0.25, 0.25, 2)), n=16)
            draw.polygon(_transform(spot, angle, centre), fill=int(rng.integers(60, 110)))


def _blob(rng: np.random.Generator, radius: float, irregular: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    r = radius * (1 + irregular * rng.uniform(-1, 1, t.size))
    return np.stack([r * np.cos(t), r * rng.uniform(0.6, 1.0) * np.sin(t)], axis=1)


def _draw_non_sperm(draw: ImageDraw.ImageDraw, kind: str, size: int, rng: np.random.Generator):
    """Debris, a round cell, a clump of blobs, or an (almost) empty field."""
    def place(points, spread, fill):
        centre = tuple(size / 2 + rng.uniform(-spread, spread, 2) * size)
        draw.polygon(_transform(points, rng.uniform(0, 2 * np.pi), centre), fill=fill)

    if kind == "debris":
        for _ in range(int(rng.integers(3, 11))):
            place(_blob(rng, size * rng.uniform(0.02, 0.07), 0.5), 0.4, int(rng.integers(120, 240)))
    elif kind == "round_cell":
        radius = size * rng.uniform(0.15, 0.27)
        place(_blob(rng, radius, 0.05), 0.12, int(rng.integers(100, 150)))
        place(_blob(rng, radius * 0.5, 0.15), 0.05, int(rng.integers(200, 250)))
    elif kind == "clump":
        for _ in range(int(rng.integers(4, 10))):
            place(_blob(rng, size * rng.uniform(0.05, 0.12), 0.25), 0.15,
                  int(rng.integers(150, 250)))
    else:  # empty field: at most a couple of faint specks
        for _ in range(int(rng.integers(0, 3))):
            place(_blob(rng, size * 0.015 + 1, 0.3), 0.45, int(rng.integers(60, 120)))


def _draw_specks(draw: ImageDraw.ImageDraw, width: int, height: int, rng: np.random.Generator):
    """Faint smear debris scattered over the whole crop (lab style): every field differs, so
    two crops of similar cells are not mistaken for re-crops of one cell."""
    for _ in range(int(rng.integers(8, 16))):
        r = min(width, height) * rng.uniform(0.008, 0.03)
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(40, 110)))


# ----------------------------------------------------------------------------- rendering

def _background(rng: np.random.Generator, donor: _Donor, width: int, height: int) -> np.ndarray:
    """Smooth low-frequency colour field around the donor's smear colour, (H, W, 3) in [0, 1]."""
    cells = int(rng.integers(2, 6))
    shading = rng.normal(0, donor.field_amplitude, (cells, cells, 1))
    tint = rng.normal(0, donor.field_amplitude / 3, (cells, cells, 3))
    coarse = (shading + tint).astype(np.float32)
    channels = [np.asarray(Image.fromarray(coarse[..., c], mode="F")
                           .resize((width, height), Image.BICUBIC)) for c in range(3)]
    return donor.background.astype(np.float32) + np.stack(channels, axis=-1)


def _render(kind: str, class_name: str, donor: _Donor, width: int, height: int,
            rng: np.random.Generator, style: str) -> np.ndarray:
    """One crop as a uint8 (H, W, 3) array."""
    size = min(width, height)
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if class_name == "Non-Sperm":
        _draw_non_sperm(draw, kind, size, rng)
    elif style == "lab":
        _draw_lab_sperm(draw, kind, size, rng)
    else:
        _draw_sperm(draw, kind, size, rng)
    if style == "lab":
        _draw_specks(draw, width, height, rng)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    image = _background(rng, donor, width, height) * (1 - alpha) + donor.stain * alpha
    image = Image.fromarray(np.clip(image * 255, 0, 255).astype(np.uint8), "RGB")
    radius = donor.blur * size / 190
    if radius > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    pixels = np.asarray(image, dtype=np.float32) * donor.gain
    pixels += rng.normal(0, donor.noise, pixels.shape).astype(np.float32)
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- public API

def _check_arguments(n_images: int, n_donors: int, size_range: tuple[int, int]) -> None:
    low, high = size_range
    problems = []
    if n_donors < 1:
        problems.append(f"n_donors={n_donors} (need >= 1)")
    if n_images < max(n_donors, 1):
        problems.append(f"n_images={n_images} (need >= n_donors={n_donors})")
    if not 8 <= low <= high:
        problems.append(f"size_range={size_range} (need 8 <= low <= high)")
    if problems:
        raise ConfigError("synthetic data: invalid " + "; ".join(problems)
                          + "; pass values that satisfy these bounds")


def _prepare_target(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir} already exists and is not an empty folder; delete it or "
                        "choose another folder for the synthetic data set")


def generate(out_dir: str | os.PathLike, n_images: int = SPEC.n_images,
             n_donors: int = SPEC.n_donors, seed: int = 0,
             size_range: tuple[int, int] = SPEC.size_range, style: str = "lab") -> Path:
    """Write a synthetic SMIDS-like data set to ``out_dir`` and return its path.

    ``style`` is ``"lab"`` (default) or ``"legacy"`` (module docstring). Same arguments give
    byte-identical files. Images are built in a temporary sibling folder
    that is renamed to ``out_dir`` only when complete (manifest last), so an interrupted run
    never leaves a partial data set. ``out_dir`` must be absent or empty.
    """
    import pandas as pd

    check_style(style)
    _check_arguments(n_images, n_donors, size_range)
    out_dir = Path(out_dir)
    _prepare_target(out_dir)
    rng = np.random.default_rng(seed)
    donors = (_sample_lab_donors if style == "lab" else _sample_legacy_donors)(rng, n_donors)
    donor_of = rng.permutation(np.repeat(np.arange(n_donors),
                                         _images_per_donor(rng, n_images, n_donors)))
    class_of = _assign_classes(rng, donor_of, donors)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name in SPEC.classes:
            (work / name).mkdir()
        rows = [_write_image(work, index, int(d), donors[d], SPEC.classes[c], seed, size_range,
                             style)
                for index, (d, c) in enumerate(zip(donor_of, class_of, strict=True))]
        write_csv(work / SPEC.manifest_name, pd.DataFrame(rows, columns=SPEC.manifest_columns))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def _write_image(root: Path, index: int, donor: int, settings: _Donor, class_name: str,
                 seed: int, size_range: tuple[int, int], style: str) -> tuple[str, str]:
    """Draw and save image ``index``; return its manifest row."""
    rng = np.random.default_rng([seed, index])
    if style == "lab":
        kind = str(rng.choice(SPEC.lab_shape_kinds[class_name], p=settings.kind_mix[class_name]))
    else:
        kind = str(rng.choice(SPEC.shape_kinds[class_name]))
    low, high = size_range
    height = int(rng.integers(low, high + 1))
    width = int(np.clip(round(height * rng.uniform(0.92, 1.08)), low, high))
    if style == "lab":
        settings = _jitter(settings, rng)
    pixels = _render(kind, class_name, settings, width, height, rng, style)
    relative = f"{class_name}/d{donor + 1:02d}_{index:05d}{SPEC.suffix}"
    Image.fromarray(pixels, "RGB").save(root / relative, format="BMP")
    return relative, donor_name(donor + 1)
