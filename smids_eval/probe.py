"""A few seconds of measured throughput, the input of the plan's ETA (``plan.py``).

For each prefix depth a run needs: a handful of random images through the frozen prefix, then
one suffix training epoch on their activations, on the run's device and precision with a
randomly initialised network of the profile's width and image size (speed does not depend on
the weight values). First calls are warm-ups and are not timed; the timed image counts are
sized from them so the whole probe stays within ``budget_s`` (about) on any host.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from .config import Profile
from .device import Runtime, resolve_runtime
from .features import extract_prefix
from .models import build_vgg19
from .train import CachedSource, Hyper, fit

#: most images in the timed prefix pass (the timed training epoch takes up to twice as many)
MAX_IMAGES = 32


@dataclass(frozen=True)
class Rates:
    """Seconds per image on this host for one prefix depth."""

    prefix_s: float     # through the frozen prefix (feature extraction)
    train_s: float      # one suffix training epoch, its validation on half as many images included


def measure_rates(profile: Profile, depths, budget_s: float = 4.0) -> dict[int, Rates]:
    """``{prefix depth: Rates}`` for the profile's device, precision, width and image size
    (``torch.compile`` is not probed). The global RNG is restored afterwards, so a probe
    never changes a run's numbers."""
    t = profile.train
    runtime = resolve_runtime(profile.device, t.precision, t.channels_last, compile=False)
    depths = sorted(set(depths))
    cuda = [runtime.device.index or 0] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        return {d: _probe_depth(profile, d, runtime, budget_s / max(1, len(depths)))
                for d in depths}


def _count(share_s: float, seconds_per_image: float, cap: int) -> int:
    """Images that fit ``share_s`` at the warm-up's rate, at least two (BatchNorm)."""
    return max(2, min(cap, int(share_s / max(seconds_per_image, 1e-6))))


def _probe_depth(profile: Profile, depth: int, runtime: Runtime, budget_s: float) -> Rates:
    m, size = profile.model, profile.data.image_size
    model = build_vgg19(3, unfreeze_blocks=5 - depth, dropout_p=m.dropout_p,
                        head_hidden=m.head_hidden, width=m.width, size=size)
    model.to(runtime.device, memory_format=runtime.memory_format)
    cap = max(2, min(profile.train.batch_size, MAX_IMAGES))
    images = torch.randint(0, 256, (cap, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))

    def extract(n: int) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        out = extract_prefix(model.prefix, images[:n], "rgb", 1, 0, runtime, batch_size=n,
                             progress=False)
        return out, (time.perf_counter() - t0) / n

    _, warm = extract(2)
    features, prefix_s = extract(_count(budget_s / 4, warm, cap))
    labels = np.arange(MAX_IMAGES * 2) % 3

    def epoch(n: int) -> float:
        x = features.repeat(-(-n // len(features)), 1, 1, 1, 1)[:n]
        n_val = max(2, n // 2)
        result = fit(copy.deepcopy(model.suffix), CachedSource(x, runtime), labels[:n],
                     CachedSource(x[:n_val], runtime), labels[:n_val], Hyper("adam", 1e-4),
                     runtime=runtime, epochs=1, batch_size=min(profile.train.batch_size, n),
                     progress=False, desc="probe")
        return float(result.history["seconds"].iloc[0]) / n

    warm = epoch(2)
    return Rates(prefix_s=prefix_s, train_s=epoch(_count(budget_s / 4, warm, MAX_IMAGES * 2)))
