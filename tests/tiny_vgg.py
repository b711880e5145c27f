"""Shared helpers for the model tests: a tiny profile (width 1/16, 32 px) and an easy image set."""

from __future__ import annotations

import numpy as np

from smids_eval.config import Profile
from smids_eval.variants import Variant

SIZE = 32
WIDTH = 1 / 16


def tiny_profile(**train) -> Profile:
    base = dict(epochs=8, batch_size=16, patience=8, precision="fp32", views=2)
    base.update(train)
    return Profile(name="tiny").replace(
        data={"image_size": SIZE}, model={"weights": "random", "width": WIDTH, "head_hidden": 16},
        train=base, evaluate={"mc_samples": 5})


def variant(name="F.0", channels="rgb", augmentation=False, dropout=False, unfreeze_blocks=0,
            optimizer="adam", learning_rate=1e-2) -> Variant:
    return Variant(name, channels, augmentation, dropout, unfreeze_blocks, optimizer, learning_rate)


def easy_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 bright, class 1 dark, class 2 high-contrast stripes; uint8 (n, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = np.empty((n, SIZE, SIZE, 3), np.float32)
    stripes = ((np.arange(SIZE) // 4) % 2 * 255.0)[None, :, None]
    for i, c in enumerate(y):
        base = {0: 210.0, 1: 40.0, 2: None}[c]
        img = np.broadcast_to(stripes, (SIZE, SIZE, 3)).copy() if base is None else np.full(
            (SIZE, SIZE, 3), base)
        x[i] = img + rng.normal(0, 12, img.shape) + rng.normal(0, 10, (1, 1, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)
