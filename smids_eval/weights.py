"""Which VGG19 conv weights to start from, and an honest id of what was actually used.

* ``imagenet``: torchvision ``VGG19_Weights.IMAGENET1K_V1`` through its normal mechanism
  (``$TORCH_HOME/hub/checkpoints``; downloaded where a network exists) → ``imagenet:IMAGENET1K_V1``
* a file path: a torchvision-layout vgg19 state dict (or a checkpoint dict with ``state_dict``)
  → ``file:<name>:<sha256[:12]>``
* ``random``: no pretraining → ``random``
* ``auto``: ``imagenet`` when its file is already cached (no network needed), else ``random`` with
  a logged warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError
from .io import load_torch
from .models import vgg19_features

log = logging.getLogger(__name__)
WEIGHT_NAMES = ("auto", "imagenet", "random")


@dataclass(frozen=True)
class Weights:
    """Conv weights (torchvision ``features.*`` keys, RGB) or None for random init."""

    state: dict[str, torch.Tensor] | None
    weights_id: str

    @property
    def pretrained(self) -> bool:
        return self.state is not None


def imagenet_cache_file() -> Path:
    from torchvision.models import VGG19_Weights

    url = VGG19_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_imagenet() -> Weights:
    from torchvision.models import VGG19_Weights

    try:
        state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:  # network or cache problems
        raise ConfigError(
            f"could not load ImageNet VGG19 weights ({exc.__class__.__name__}: {exc}); without a "
            f"network put vgg19-dcbb9e9d.pth at {imagenet_cache_file()}, or use --weights-file PATH "
            f"or weights = \"random\"") from exc
    return Weights({k: v for k, v in state.items() if k.startswith("features.")},
                   "imagenet:IMAGENET1K_V1")


def expected_shapes(width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """Shapes of torchvision vgg19 ``features.*`` tensors at this width (RGB input)."""
    shapes = {}
    for i, m in enumerate(vgg19_features(width, 3)):
        if isinstance(m, torch.nn.Conv2d):
            shapes[f"features.{i}.weight"] = tuple(m.weight.shape)
            shapes[f"features.{i}.bias"] = tuple(m.bias.shape)
    return shapes


def load_weights_file(path: str | os.PathLike, width: float = 1.0) -> Weights:
    """Load and validate a user-supplied vgg19 state dict (width ≠ 1 only for tiny test models)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist; pass a torchvision vgg19 state dict "
                          f"saved with torch.save(model.state_dict(), PATH)")
    raw = path.read_bytes()
    obj = load_torch(path, weights_only=True, what="weights file",
                     remedy="re-save it with torch.save(model.state_dict(), PATH)")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {path} holds a {type(obj).__name__}, not a state dict of "
                          f"tensors (torchvision vgg19 keys features.0.weight, ...)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    expected = expected_shapes(width)
    missing = sorted(set(expected) - set(state), key=_key_order)
    if missing:
        raise ConfigError(f"weights file {path} lacks vgg19 keys {missing[:6]}"
                          f"{' ...' if len(missing) > 6 else ''} ({len(missing)} missing); "
                          f"expected torchvision vgg19 layout (features.<i>.weight/bias)")
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {shape}"
           for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if bad:
        raise ConfigError(f"weights file {path} does not fit VGG19 at width {width}: "
                          f"{'; '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}")
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return Weights({k: state[k] for k in expected}, f"file:{path.name}:{digest}")


def _key_order(key: str) -> tuple[int, str]:
    parts = key.split(".")
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0, key)


def resolve_weights(spec: str | os.PathLike = "auto", width: float = 1.0) -> Weights:
    """Resolve ``auto | imagenet | random | PATH`` into loaded weights plus their id."""
    if isinstance(spec, str) and spec in WEIGHT_NAMES:
        if spec == "random":
            return Weights(None, "random")
        if width != 1.0:
            if spec == "imagenet":
                raise ConfigError(f"ImageNet weights need width = 1.0 (got width = {width}); "
                                  f"use weights = \"random\" for scaled-down models")
            log.warning("weights=auto with width=%s: ImageNet weights need width 1; using random "
                        "initialisation (not pretrained)", width)
            return Weights(None, "random")
        if spec == "imagenet":
            return load_imagenet()
        cached = imagenet_cache_file()
        if cached.is_file():
            return load_imagenet()
        log.warning("weights=auto: ImageNet VGG19 weights not cached at %s and no download is "
                    "attempted; using random initialisation (NOT pretrained). Put the file there "
                    "or pass --weights-file to use pretrained weights", cached)
        return Weights(None, "random")
    return load_weights_file(spec, width)
