"""Batched, seeded augmentation of image tensors on the compute device.

One call transforms a whole batch with per-image random parameters: the geometric part (random
horizontal/vertical flip, 90° rotation, small rotation/scale/translation) is one ``affine_grid`` +
``grid_sample``; the colour part (brightness, contrast, saturation, hue, suited to stain
variations of smears) is a few tensor ops. ``torchvision.transforms.v2`` draws one parameter set
per call (i.e. per batch), so only its functional grey conversion is reused here.

Parameters of view ``k`` of image ``i`` are row ``i`` of ``draw_params(n, seed, k)``: a CPU
``torch.Generator`` seeded with (seed, k) fills rows in order, so a view is reproducible whatever
the batch size or device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

N_PARAMS = 11


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    degrees: float = 10.0          # small extra rotation, ±
    translate: float = 0.05        # fraction of the side, ±
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.15       # factor in [1 - b, 1 + b]
    contrast: float = 0.15
    saturation: float = 0.2
    hue: float = 0.04              # fraction of the colour wheel, ±


DEFAULT_AUGMENT = AugmentConfig()


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) RGB → uint8 tensor (N, 3, S, S) (no copy of the pixel data's values)."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, S, S, 3), got {tuple(t.shape)} {t.dtype}")
    return t.permute(0, 3, 1, 2)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 → float32 in [0, 1]; float input passes through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def to_channels(x: torch.Tensor, channels: str) -> torch.Tensor:
    """RGB float (N, 3, S, S) → (N, 1, S, S) luminance for ``grey``; unchanged for ``rgb``."""
    return TF.rgb_to_grayscale(x, num_output_channels=1) if channels == "grey" else x


def draw_params(n: int, seed: int, view: int) -> torch.Tensor:
    """(n, N_PARAMS) uniforms in [0, 1) for view ``view``; row i depends only on (seed, view, i)."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(view)) % (2 ** 63))
    return torch.rand((n, N_PARAMS), generator=g)


def _geometry(u: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Per-image 2x3 affine matrices (output → input normalised coordinates)."""
    n = u.shape[0]
    one = torch.ones(n, device=u.device)
    fx = torch.where(u[:, 0] < 0.5, -one, one) if cfg.flips else one
    fy = torch.where(u[:, 1] < 0.5, -one, one) if cfg.flips else one
    k = torch.floor(u[:, 2] * 4).clamp(max=3) if cfg.rot90 else torch.zeros(n, device=u.device)
    # exact cos/sin of k·90°
    c90 = torch.tensor([1.0, 0.0, -1.0, 0.0], device=u.device)[k.long()]
    s90 = torch.tensor([0.0, 1.0, 0.0, -1.0], device=u.device)[k.long()]
    angle = (u[:, 3] * 2 - 1) * math.radians(cfg.degrees)
    scale = cfg.scale[0] + u[:, 4] * (cfg.scale[1] - cfg.scale[0])
    ca, sa = torch.cos(angle) / scale, torch.sin(angle) / scale
    # A = R(angle)/scale @ R(k·90°) @ diag(fx, fy)
    a00, a01 = ca * c90 - sa * s90, -(ca * s90 + sa * c90)
    a10, a11 = sa * c90 + ca * s90, -sa * s90 + ca * c90
    theta = torch.stack([torch.stack([a00 * fx, a01 * fy, (u[:, 5] * 2 - 1) * 2 * cfg.translate], 1),
                         torch.stack([a10 * fx, a11 * fy, (u[:, 6] * 2 - 1) * 2 * cfg.translate], 1)],
                        1)
    return theta


def _hue_rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by ``turns`` of the colour wheel (batched, linear)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device)
    from_yiq = torch.linalg.inv(to_yiq)
    c, s = torch.cos(turns * 2 * math.pi), torch.sin(turns * 2 * math.pi)
    n = x.shape[0]
    rot = torch.zeros(n, 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    m = from_yiq @ rot @ to_yiq                      # (n, 3, 3)
    return torch.einsum("nij,njhw->nihw", m, x)


def augment(x: torch.Tensor, params: torch.Tensor, cfg: AugmentConfig = DEFAULT_AUGMENT
            ) -> torch.Tensor:
    """Augment float RGB images (B, 3, S, S) in [0, 1] with per-image ``params`` (B, N_PARAMS)."""
    x = x.float()
    u = params.to(x.device, torch.float32)
    grid = F.affine_grid(_geometry(u, cfg), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def factor(col: int, amount: float) -> torch.Tensor:
        return (1 + (u[:, col] * 2 - 1) * amount).view(-1, 1, 1, 1)

    x = (x * factor(7, cfg.brightness)).clamp_(0, 1)
    mean = TF.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(8, cfg.contrast) + mean).clamp_(0, 1)
    grey = TF.rgb_to_grayscale(x)
    x = ((x - grey) * factor(9, cfg.saturation) + grey).clamp_(0, 1)
    turns = (u[:, 10] * 2 - 1) * cfg.hue
    return _hue_rotate(x, turns).clamp_(0, 1)
