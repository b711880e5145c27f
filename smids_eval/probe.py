"""A few seconds of measured throughput, the input of the plan's ETA (``plan.py``).

For each prefix depth a run needs: a handful of random images through the frozen prefix, then
one suffix training epoch on their activations, on the run's device and precision with a
randomly initialised network of the profile's width and image size (speed does not depend on
the weight values). Each measurement is run twice and the second is timed (first calls build
kernels); the training rate is the difference between a 2-batch and a 4-batch epoch, per added
image, so fixed per-epoch costs do not inflate it. A probe takes a few seconds on a CPU at 64 px.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from .config import Profile
from .device import Runtime, compute_threads, resolve_runtime
from .features import extract_prefix
from .models import build_vgg19
from .train import CachedSource, Hyper, fit

#: most images in the timed prefix pass
MAX_IMAGES = 32


@dataclass(frozen=True)
class Rates:
    """Seconds per image on this host for one prefix depth."""

    prefix_s: float     # through the frozen prefix (feature extraction, every core)
    train_s: float      # one suffix training epoch, its validation on half as many images
    #                     included, at the profile's cpu_threads (as each fold computation runs)


def measure_rates(profile: Profile, depths) -> dict[int, Rates]:
    """``{prefix depth: Rates}`` for the profile's device, precision, width and image size
    (``torch.compile`` is not probed). The global RNG is restored afterwards, so a probe
    never changes a run's numbers."""
    t = profile.train
    runtime = resolve_runtime(profile.device, t.precision, t.channels_last, compile=False)
    depths = sorted(set(depths))
    cuda = [runtime.device.index or 0] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        return {d: _probe_depth(profile, d, runtime) for d in depths}


def _probe_depth(profile: Profile, depth: int, runtime: Runtime) -> Rates:
    """Each measurement runs twice with the run's own batch shapes and the second is timed:
    oneDNN / cuDNN build kernels per shape on first use, which a run pays once, not per batch."""
    m, size, batch = profile.model, profile.data.image_size, profile.train.batch_size
    model = build_vgg19(3, unfreeze_blocks=5 - depth, dropout_p=m.dropout_p,
                        small_map_conv=profile.train.small_map_conv,
                        head_hidden=m.head_hidden, width=m.width, size=size)
    model.to(runtime.device, memory_format=runtime.memory_format)
    n = max(2, min(batch, MAX_IMAGES))
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))

    def extract() -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        out = extract_prefix(model.prefix, images, "rgb", 1, 0, runtime, batch_size=n,
                             progress=False)
        return out, (time.perf_counter() - t0) / n

    extract()
    features, prefix_s = extract()

    def epoch(batches: int) -> float:
        """Seconds of one epoch of ``batches`` full training batches, validated on half as many
        images (as an inner fold is)."""
        n_train = batches * batch
        x = features.repeat(-(-n_train // n), 1, 1, 1, 1)[:n_train]
        labels = np.arange(n_train) % 3
        val = n_train // 2
        result = fit(copy.deepcopy(model.suffix), CachedSource(x, runtime), labels,
                     CachedSource(x[:val], runtime), labels[:val], Hyper("adam", 1e-4),
                     runtime=runtime, epochs=1, batch_size=batch, progress=False, desc="probe")
        return float(result.history["seconds"].iloc[0])

    with compute_threads(profile.train.cpu_threads if runtime.device.type == "cpu" else 0):
        epoch(2)
        short, long = epoch(2), epoch(4)
    # the marginal cost of an image: what an epoch costs whatever its size (the optimizer's
    # first step, copying the best state) weighs on a 2-batch probe, not on a real epoch
    extra = 2 * batch
    return Rates(prefix_s=prefix_s,
                 train_s=(long - short) / extra if long > short else long / (2 * extra))
