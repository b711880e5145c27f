"""Shifted copies of images for robustness checks: uint8 (N, S, S, 3) RGB in, same out.

Registry ``SHIFTS``: name -> function(images, severity, rng). Severities 1..3, stronger with
higher severity; deterministic for a given seed."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import hed2rgb, hsv2rgb, rgb2hed, rgb2hsv

from ..metric_names import metric_column, shift_set

SEVERITIES = (1, 2, 3)
#: part of the key under which shifted copies' activations and descriptors are cached
#: (``shift_panel.ShiftPanel.set_key``): raise it when a shift's output changes
SHIFTS_VERSION = 1


def _check(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, S, S, 3) images, got {images.dtype} {images.shape}")
    return images


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def stain(images, severity, rng):
    """Stain change: hue rotation and saturation scaling in HSV."""
    hsv = rgb2hsv(images)
    hsv[..., 0] = (hsv[..., 0] + (0.06, 0.15, 0.30)[severity - 1]) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * (1.3, 1.6, 2.0)[severity - 1], 0, 1)
    return _to_uint8(hsv2rgb(hsv) * 255)


def brightness_contrast(images, severity, rng):
    """Lower contrast around each image's mean, then a brightness offset."""
    x = images.astype(np.float64)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    contrast, offset = (0.75, 0.5, 0.3)[severity - 1], (15, 35, 60)[severity - 1]
    return _to_uint8((x - mean) * contrast + mean + offset)


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    k = (r[:, None] ** 2 + r[None, :] ** 2 <= radius ** 2 + 0.5).astype(np.float64)
    return k / k.sum()


def defocus_blur(images, severity, rng):
    """Pillbox (defocus) blur; radius grows with severity and image size."""
    size = images.shape[1]
    radius = max(severity, round((0.02, 0.045, 0.08)[severity - 1] * size))
    kernel = _disk(radius)[None, :, :, None]
    return _to_uint8(ndimage.convolve(images.astype(np.float64), kernel, mode="reflect"))


def gaussian_noise(images, severity, rng):
    """Additive Gaussian pixel noise, sigma 8 / 18 / 36 grey levels."""
    sigma = (8.0, 18.0, 36.0)[severity - 1]
    return _to_uint8(images + rng.normal(0.0, sigma, images.shape))


def _per_image(images, fn):
    return np.stack([np.asarray(fn(Image.fromarray(im))) for im in images])


def jpeg(images, severity, rng):
    """JPEG re-encoding at quality 30 / 12 / 4 (PIL)."""
    quality = (30, 12, 4)[severity - 1]

    def encode(im):
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return _per_image(images, encode)


def rescale(images, severity, rng):
    """Down-sampling by 2 / 3 / 4 and bilinear up-sampling back (lost resolution)."""
    size = images.shape[1]
    small = max(2, size // (2, 3, 4)[severity - 1])
    return _per_image(images, lambda im: im.resize((small, small), Image.BILINEAR)
                      .resize((size, size), Image.BILINEAR))


def hed_stain(images, severity, rng):
    """Another staining protocol: haematoxylin and eosin densities rescaled and swapped in
    weight in the HED stain space (Ruifrok & Johnston), as between labs' stain batches."""
    hed = rgb2hed(images.astype(np.float64) / 255.0)
    h_gain, e_gain = ((0.6, 1.8), (0.35, 2.8), (0.15, 4.5))[severity - 1]
    hed[..., 0] *= h_gain
    hed[..., 1] = hed[..., 1] * e_gain + (0.01, 0.03, 0.06)[severity - 1]
    return _to_uint8(np.clip(hed2rgb(hed), 0, 1) * 255)


def grey(images, severity, rng):
    """Colour to grey (an unstained or monochrome-camera lab), blended 50 / 80 / 100%."""
    x = images.astype(np.float64)
    lum = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    w = (0.5, 0.8, 1.0)[severity - 1]
    return _to_uint8((1 - w) * x + w * lum)


def pseudo_colour(images, severity, rng):
    """Grey to pseudo-colour (a camera's false-colour lookup table), blended 40 / 70 / 100%."""
    from matplotlib import colormaps

    x = images.astype(np.float64)
    lum = (x @ np.array([0.299, 0.587, 0.114])) / 255.0
    mapped = colormaps["viridis"](lum)[..., :3] * 255.0
    w = (0.4, 0.7, 1.0)[severity - 1]
    return _to_uint8((1 - w) * x + w * mapped)


def zoom_in(images, severity, rng):
    """Higher magnification / head-only crops: the central 75 / 55 / 40% enlarged to the crop."""
    size = images.shape[1]
    side = max(2, round(size * (0.75, 0.55, 0.40)[severity - 1]))
    lo = (size - side) // 2
    return _per_image(images, lambda im: im.crop((lo, lo, lo + side, lo + side))
                      .resize((size, size), Image.BILINEAR))


def zoom_out(images, severity, rng):
    """Lower magnification: the crop shrunk to 75 / 55 / 40% and padded with its own border
    colour (more background around a smaller cell)."""
    size = images.shape[1]
    side = max(2, round(size * (0.75, 0.55, 0.40)[severity - 1]))
    lo = (size - side) // 2
    out = []
    for im in images:
        edge = np.concatenate([im[0], im[-1], im[:, 0], im[:, -1]])
        canvas = np.empty_like(im)
        canvas[:] = np.median(edge, axis=0).astype(np.uint8)
        canvas[lo:lo + side, lo:lo + side] = np.asarray(
            Image.fromarray(im).resize((side, side), Image.BILINEAR))
        out.append(canvas)
    return np.stack(out)


#: name -> function(images, severity, rng); a new shift is one function plus one line here
SHIFTS = {"stain": stain, "hed_stain": hed_stain, "grey": grey, "pseudo_colour": pseudo_colour,
          "brightness_contrast": brightness_contrast, "defocus_blur": defocus_blur,
          "gaussian_noise": gaussian_noise, "jpeg": jpeg, "rescale": rescale,
          "zoom_in": zoom_in, "zoom_out": zoom_out}


def apply_shift(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Shifted copy of ``images`` (uint8 (N, S, S, 3)); same seed -> same output."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    return SHIFTS[name](_check(images), severity, np.random.default_rng(seed))


def shift_key(name: str, severity: int) -> str:
    return shift_set(name, severity)


def shift_accuracy_keys(clean_accuracy: float, accuracies: dict[str, float]) -> dict[str, float]:
    """``{"<shift>_s<k>": acc}`` -> ``shift_<shift>_s<k>_accuracy`` and ``..._accuracy_drop``
    (clean minus shifted accuracy; positive = worse under the shift)."""
    res = {}
    for key, acc in accuracies.items():
        res[metric_column("shift", "accuracy", set=key)] = float(acc)
        res[metric_column("shift", "accuracy_drop", set=key)] = float(clean_accuracy - acc)
    return res
