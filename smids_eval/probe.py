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
from sklearn.ensemble import RandomForestClassifier

from .config import Profile
from .device import Runtime, compute_threads, resolve_runtime
from .evaluate import evaluate_fold, fit_confidence_artifacts
from .evaluate.descriptors import IMAGE_STAT_NAMES, block_moments_width
from .evaluate.ood import DescriptorDistance
from .features import extract_prefix
from .models import build_vgg19
from .outputs import ModelOutputs
from .train import CachedSource, Hyper, fit

#: most images in the timed prefix pass
MAX_IMAGES = 32
#: the long training epoch of the probe lasts about this long, in at most MAX_BATCHES batches
EPOCH_S, MAX_BATCHES = 0.25, 32


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
        first = epoch(2)
        # a long epoch of at least ~EPOCH_S: a head's 2-batch difference (~5 ms) drowns in the
        # fixed costs' noise (the probe once read 10 µs per image for a 37 µs head)
        more = int(min(MAX_BATCHES, max(4, np.ceil(EPOCH_S / max(first / 2, 1e-6)))))
        short = min(epoch(2) for _ in range(2))
        long = min(epoch(more) for _ in range(2))
    # the marginal cost of an image: what an epoch costs whatever its size (the optimizer's
    # first step, copying the best state) weighs on a 2-batch probe, not on a real epoch
    extra = (more - 2) * batch
    return Rates(prefix_s=prefix_s,
                 train_s=(long - short) / extra if long > short else long / (more * batch))


@dataclass(frozen=True)
class EvalSizes:
    """Image counts of one outer fold's evaluation (``plan.py`` takes them from the run)."""

    train: int
    val: int
    test: int
    shifted: dict[str, int]   # shift-panel set -> copies held out in the fold
    far: dict[str, int]       # far-OOD and foreign-lab sets


@dataclass(frozen=True)
class EvalRates:
    """Seconds of one result's evaluation and of one random-forest head's fits on this host."""

    arm_s: float      # metrics of one arm (every scorer, OOD detector, conformal, selective)
    forest_s: float   # per tree × training image × log2(training images) of a forest


def measure_evaluation(profile: Profile, sizes: EvalSizes) -> EvalRates:
    """Time the metrics of one arm (``evaluate.evaluate_fold`` plus the confidence artifacts)
    on random outputs of the fold's sizes, and a small forest of the RF head's kind. The
    metrics cost about as much per arm as a head's training (OOD detectors on every shifted
    set), which a forward-pass count does not see. The global RNG is untouched."""
    e, m = profile.evaluate, profile.model
    rng = np.random.default_rng(0)
    moments = block_moments_width(m.width)

    def outputs(n: int, groups: int) -> ModelOutputs:
        logits = rng.normal(size=(n, 3))
        mc = rng.dirichlet(np.ones(3), size=(e.mc_samples, n)) if e.mc_samples else None
        return ModelOutputs(logits=logits, features=rng.normal(size=(n, m.head_hidden)),
                            labels=rng.integers(0, 3, n), mc_probs=mc,
                            groups=rng.integers(0, max(groups, 1), n),
                            descriptors={"image_stats": rng.normal(size=(n, len(IMAGE_STAT_NAMES))),
                                         "block_moments": rng.normal(size=(n, moments))})

    train, val, test = outputs(sizes.train, 10), outputs(sizes.val, 4), outputs(sizes.test, 3)
    shifted = {k: outputs(n, 3) for k, n in sizes.shifted.items()}
    worst = f"_s{max(e.ood_severities, default=0)}"
    ood = {**{k: outputs(n, 1) for k, n in sizes.far.items()},
           **{k: o for k, o in shifted.items() if k.endswith(worst)}}
    graded = {k: o for k, o in shifted.items() if not k.endswith(worst)}

    def arm() -> float:
        t0 = time.perf_counter()
        row = evaluate_fold(train, val, test, ood_sets=ood, shifted=shifted, graded=graded,
                            config=e, batch_keys={})
        fit_confidence_artifacts(train, val, e, temperature=row["cal_temperature"]).apply(test)
        return time.perf_counter() - t0

    # a forest on features whose labels depend on them (random labels grow deeper trees)
    n, trees = 512, 10
    x = rng.normal(size=(n, 512)).astype(np.float32)
    y = np.argmax(x[:, :3] + 0.5 * rng.normal(size=(n, 3)), axis=1)
    # threads as each fold computation runs; the probe's fits do not take the run's memo slots
    with compute_threads(profile.train.cpu_threads), DescriptorDistance.memo_apart():
        arm()   # the second arm of a fold is timed: the acquisition detectors' fits are shared
        arm_s = arm()
        t0 = time.perf_counter()
        RandomForestClassifier(n_estimators=trees, random_state=0, n_jobs=1).fit(x, y)
        forest_s = (time.perf_counter() - t0) / (trees * n * np.log2(n))
    return EvalRates(arm_s=round(arm_s, 4), forest_s=float(forest_s))
