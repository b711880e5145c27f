"""Grad-CAM (Selvaraju et al. 2017) on the last conv layer of a fold's full model, and rebuilding
that model from ``models/<variant>/fold<k>-<setting>.pt``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import images_to_tensor, to_channels, to_float
from ..models import VGG19Variant
from ..variants import Variant


def load_fold_model(path: str | Path, init_seed: int | None = None) -> tuple[VGG19Variant, Variant]:
    """The whole network of one saved fold on CPU in fp32 (eval mode) and its variant."""
    from ..run_folder import RunFolder
    from ..saved_model import build_engine

    saved = RunFolder.load_model(Path(path))
    engine = build_engine(saved, "cpu", None, Path(path), precision="fp32")
    return engine.full_model(saved.suffix_state).float(), Variant(**saved.variant)


def model_input(images: np.ndarray, channels: str) -> torch.Tensor:
    """uint8 (N, S, S, 3) RGB → float [0, 1] (N, 1|3, S, S) as the variant expects."""
    return to_channels(to_float(images_to_tensor(images)).contiguous(), channels)


def grad_cam(model: VGG19Variant, x: torch.Tensor, target: np.ndarray | None = None,
             layer: torch.nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (N, S, S) in [0, 1] for class ``target`` (default: the predicted class) and the
    softmax probabilities (N, C). ``layer`` defaults to the model's last ``Conv2d``."""
    layer = layer or model.conv_layers()[-1]
    store: dict[str, torch.Tensor] = {}

    def forward_hook(_module, _inputs, output):
        store["act"] = output
        output.register_hook(lambda grad: store.__setitem__("grad", grad))

    handle = layer.register_forward_hook(forward_hook)
    try:
        model.eval()
        x = x.detach().clone().requires_grad_(True)  # frozen prefixes still pass gradients on
        with torch.enable_grad():
            logits = model(x)
            target_t = (logits.argmax(1) if target is None
                        else torch.as_tensor(np.asarray(target), dtype=torch.long))
            logits.gather(1, target_t.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach(), store["grad"].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).numpy(), torch.softmax(logits.detach(), 1).numpy()
