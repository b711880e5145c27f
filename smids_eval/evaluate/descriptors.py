"""Acquisition-level descriptors of input images: what changes between labs, microscopes and
stains, independent of the classifier's semantic features.

* ``image_stats``: colour (RGB and Haematoxylin-Eosin-DAB stain space), background level,
  illumination gradient, sharpness, noise, spectral content and object fraction (a scale
  proxy), computed from the decoded image (RGB uint8, the profile's image size);
* ``block_moments``: per-channel mean and standard deviation of the first two VGG19 blocks'
  activations (low-level texture/colour statistics, Lee et al. 2018's multi-layer idea).

``describe`` returns ``{name: (N, D) float64}``; acquisition detectors in ``ood.py`` read them
from ``ModelOutputs.descriptors``. ``DescriptorCache`` stores them on disk by content, so that
an image set is described once across folds, repeats, worker processes and runs."""

from __future__ import annotations

from itertools import accumulate

import numpy as np
import torch
from skimage.color import rgb2hed

from ..augment import images_to_tensor, to_channels, to_float
from ..features import FeatureCache, LazyImages
from ..models import VGG19_BLOCKS, scaled

IMAGE_STAT_NAMES = (
    *(f"mean_{c}" for c in "rgb"), *(f"std_{c}" for c in "rgb"),
    *(f"hed_mean_{c}" for c in "hed"), *(f"hed_std_{c}" for c in "hed"),
    "saturation_mean", "saturation_std", "chroma_rg_std", "chroma_yb_std", "grey_spread",
    "background_level", "background_std", "object_fraction", "dynamic_range",
    "illumination_gradient", "log_laplacian_var", "log_noise_mad", "log_hf_energy",
    "log_mid_energy",
)
#: non-negative spreads and shares, compared on a log scale (a grey image's zero saturation or
#: a flat field's zero contrast is far from any real crop's small value)
_LOG_COLUMNS = [i for i, n in enumerate(IMAGE_STAT_NAMES)
                if n.startswith(("std_", "hed_std_", "saturation_", "chroma_"))
                or n in ("grey_spread", "background_std", "object_fraction", "dynamic_range",
                         "illumination_gradient")]
#: the VGG19 blocks (``models.VGG19_BLOCKS``: channels of each conv) whose activations'
#: per-channel moments are the ``block_moments``: blocks 1 and 2
MOMENT_BLOCKS = VGG19_BLOCKS[:2]
#: prefix indices (after Normalize) of the max-pool that ends each of ``MOMENT_BLOCKS``: a block
#: is (conv, ReLU) per conv then a max-pool (``models.vgg19_features``), so (4, 9)
_BLOCK_ENDS = tuple(end - 1 for end in accumulate(2 * len(block) + 1 for block in MOMENT_BLOCKS))
#: part of ``DescriptorCache``'s key: raise it when a descriptor's computation changes
DESCRIPTORS_VERSION = 1


def _border(grey: np.ndarray) -> np.ndarray:
    s = grey.shape[1]
    w = max(1, s // 16)
    return np.concatenate([grey[:, :w].reshape(len(grey), -1), grey[:, -w:].reshape(len(grey), -1),
                           grey[:, :, :w].reshape(len(grey), -1),
                           grey[:, :, -w:].reshape(len(grey), -1)], axis=1)


def _plane_gradient(grey: np.ndarray) -> np.ndarray:
    """Magnitude of the least-squares linear illumination ramp across the crop."""
    s = grey.shape[1]
    yy, xx = np.mgrid[0:s, 0:s] / max(s - 1, 1) - 0.5
    design = np.stack([np.ones(s * s), yy.ravel(), xx.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, grey.reshape(len(grey), -1).T, rcond=None)
    return np.hypot(coef[1], coef[2])


def _band_energy(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log share of spectral power above half-Nyquist and between quarter and half-Nyquist."""
    centred = grey - grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.rfft2(centred)) ** 2
    fy = np.fft.fftfreq(grey.shape[1])[:, None]
    fx = np.fft.rfftfreq(grey.shape[2])[None, :]
    radius = np.hypot(fy, fx)
    total = power.sum(axis=(1, 2)) + 1e-12
    high = power[:, radius > 0.25].sum(axis=1)
    mid = power[:, (radius > 0.125) & (radius <= 0.25)].sum(axis=1)
    return np.log(high / total + 1e-6), np.log(mid / total + 1e-6)


def image_statistics(images: np.ndarray, batch: int = 512) -> np.ndarray:
    """(N, len(IMAGE_STAT_NAMES)) acquisition statistics of uint8 RGB images (N, S, S, 3)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, S, S, 3) images, got {images.dtype} {images.shape}")
    return np.concatenate([_statistics(images[i:i + batch]) for i in range(0, len(images), batch)]
                          or [np.empty((0, len(IMAGE_STAT_NAMES)))])


def _statistics(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64) / 255.0
    grey = x.mean(axis=-1)
    hed = rgb2hed(x)
    hi, lo = x.max(axis=-1), x.min(axis=-1)
    saturation = (hi - lo) / np.maximum(hi, 1e-6)
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    border = _border(grey)
    background = np.median(border, axis=1)
    flat = grey.reshape(len(grey), -1)
    lap = (4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1]
           - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:]).reshape(len(grey), -1)
    high, mid = _band_energy(grey)
    cols = [
        x.mean(axis=(1, 2)), x.std(axis=(1, 2)),
        hed.mean(axis=(1, 2)), hed.std(axis=(1, 2)),
        saturation.mean(axis=(1, 2))[:, None], saturation.std(axis=(1, 2))[:, None],
        rg.std(axis=(1, 2))[:, None], yb.std(axis=(1, 2))[:, None],
        (hi - lo).mean(axis=(1, 2))[:, None],
        background[:, None], border.std(axis=1)[:, None],
        (np.abs(flat - background[:, None]) > 0.1).mean(axis=1)[:, None],
        (np.percentile(flat, 99, axis=1) - np.percentile(flat, 1, axis=1))[:, None],
        _plane_gradient(grey)[:, None],
        np.log(lap.var(axis=1) + 1e-6)[:, None],
        np.log(np.median(np.abs(lap - np.median(lap, axis=1, keepdims=True)), axis=1)
               + 1e-4)[:, None],
        high[:, None], mid[:, None],
    ]
    out = np.concatenate(cols, axis=1)
    out[:, _LOG_COLUMNS] = np.log(out[:, _LOG_COLUMNS] + 1e-3)
    return out


def block_moments_width(width: float) -> int:
    """Columns of ``block_moments`` for a VGG19 of channel multiplier ``width``: a mean and a
    standard deviation per output channel of each of ``MOMENT_BLOCKS``."""
    return 2 * sum(scaled(block[-1], width) for block in MOMENT_BLOCKS)


def has_block_moments(prefix: torch.nn.Sequential) -> bool:
    """Whether ``prefix`` (Normalize + frozen layers) holds VGG19 blocks 1 and 2."""
    return len(prefix) >= 1 + _BLOCK_ENDS[-1] + 1


@torch.inference_mode()
def block_moments(prefix: torch.nn.Sequential, images: np.ndarray, channels: str,
                  batch: int = 128, bf16: bool = True) -> np.ndarray | None:
    """(N, ``block_moments_width(width)``) per-channel mean and std of ``MOMENT_BLOCKS`` (VGG19
    blocks 1 and 2), or None when ``prefix`` (Normalize + frozen layers) holds fewer. ``bf16``: convolutions
    under bf16 autocast (twice as fast on CPU; moments agree with float32 to ~0.5%)."""
    if not has_block_moments(prefix):
        return None
    layers = list(prefix)
    device = next((p.device for p in prefix.parameters()), torch.device("cpu"))
    tensor = images_to_tensor(images)
    out = []
    for start in range(0, len(tensor), batch):
        x = to_channels(to_float(tensor[start:start + batch].to(device)), channels).float()
        x = layers[0](x)
        stats = []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for i, layer in enumerate(layers[1:1 + _BLOCK_ENDS[-1] + 1]):
                x = layer(x)
                if i in _BLOCK_ENDS:
                    y = x.float()
                    stats += [y.mean(dim=(2, 3)), y.std(dim=(2, 3))]
        out.append(torch.cat(stats, dim=1).float().cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else None


DESCRIPTORS = ("image_stats", "block_moments")


def describe(images: np.ndarray, prefix: torch.nn.Sequential | None = None,
             channels: str = "rgb", names=DESCRIPTORS) -> dict[str, np.ndarray]:
    """The descriptors ``names`` of ``images`` that can be computed: image statistics always,
    block moments when a frozen prefix with at least two VGG19 blocks is given."""
    res = {"image_stats": image_statistics(images)} if "image_stats" in names else {}
    if prefix is not None and "block_moments" in names:
        moments = block_moments(prefix, images, channels)
        if moments is not None:
            res["block_moments"] = moments
    return res


class DescriptorCache:
    """One descriptor of an image set, computed once per content and stored under
    ``directory`` (``None``: computed every time). Image statistics depend on the pixels only;
    block moments also on the prefix's identity (``engine.prefix_identity``: channels,
    weights, width), not on its depth."""

    def __init__(self, directory):
        self.store = FeatureCache(directory, stem="descriptors")

    def get(self, name: str, images: LazyImages, prefix: torch.nn.Sequential | None = None,
            identity: dict | None = None, wait: bool = True) -> np.ndarray | None:
        """Descriptor ``name`` (one of ``DESCRIPTORS``) of ``images``, or None for block
        moments without a two-block ``prefix``. Block moments need the prefix's ``identity``
        (``engine.prefix_identity``): it is their key, so moments of other weights are never
        reused. ``images`` are made only when it is not stored; ``wait=False``:
        ``features.CacheBusy`` while another process computes it."""
        if name not in DESCRIPTORS:
            raise ValueError(f"unknown descriptor {name!r}; use one of {DESCRIPTORS}")
        if name == "block_moments" and (prefix is None or not has_block_moments(prefix)):
            return None
        key = {"version": DESCRIPTORS_VERSION, "descriptor": name, "images": images.key}
        if name == "block_moments":
            if identity is None:
                raise ValueError("block moments need the prefix's identity "
                                 "(engine.prefix_identity): pass identity=")
            key.update(identity)

        def compute() -> torch.Tensor:
            if name == "image_stats":
                return torch.from_numpy(image_statistics(images.get()))
            return torch.from_numpy(block_moments(prefix, images.get(), identity["channels"]))

        return self.store.get(key, compute, wait=wait).numpy()
