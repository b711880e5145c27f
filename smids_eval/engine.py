"""One variant under one profile: model, weights, device/precision, feature cache, fit, predict.

Typical use by the study::

    engine = Engine(variant, profile, device="auto", weights="auto", cache_dir=cache)
    feats = engine.prefix_features(images_uint8)            # (N, V, ...) cached
    result = engine.fit(feats[tr], y[tr], feats[va], y[va], hyper, seed=0)
    out = engine.predict(result.state_dict, feats[te, 0], mc_samples=30)
    model = engine.full_model(result.state_dict)             # nn.Module on float [0,1] images
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .augment import DEFAULT_AUGMENT, AugmentConfig, images_to_tensor
from .config import Profile
from .device import resolve_runtime
from .features import FeatureCache, LazyImages, extract_prefix
from .models import VGG19Variant, build_vgg19, init_head_, with_state
from .outputs import ModelOutputs
from .train import CachedSource, FitResult, Hyper, ImageSource, fit, predict_outputs
from .variants import Variant
from .weights import resolve_weights

log = logging.getLogger(__name__)
CACHE_VERSION = 2   # 2: shifted copies' activations computed at the profile's cpu_threads


def uses_feature_cache(variant: Variant, profile: Profile) -> bool:
    """Whether ``variant`` trains on cached prefix activations; with all five blocks trained
    there is no frozen prefix worth caching (the plan reads this rule too)."""
    return bool(profile.train.feature_cache and variant.unfreeze_blocks < 5)


def cache_views(profile: Profile, augment: bool) -> int:
    """Views per image in a feature cache: the identity plus the pre-drawn augmentations."""
    return 1 + profile.train.views if augment else 1


def prefix_depth(variant: Variant) -> int:
    """Frozen conv blocks in front of the trainable suffix (``VGG19Variant.prefix_depth``)."""
    return 5 - variant.unfreeze_blocks


def prefix_identity(variant: Variant, profile: Profile, weights_id: str, init_seed: int) -> dict:
    """What a frozen prefix's first blocks compute besides their input images: channels,
    weights (the init seed when random) and width. Part of every feature cache key, and the
    key of the block-moment descriptors (``evaluate.descriptors.DescriptorCache``)."""
    return {"channels": variant.channels, "weights": weights_id,
            "init_seed": init_seed if weights_id == "random" else None,
            "width": profile.model.width}


def feature_cache_key(variant: Variant, profile: Profile, *, fingerprint: str, weights_id: str,
                      augment: bool, init_seed: int, augment_seed: int, precision: str,
                      augment_cfg: AugmentConfig = DEFAULT_AUGMENT) -> dict:
    """Everything a frozen-feature cache entry depends on (``FeatureCache`` key): an engine
    stores under it, and the plan reads it to tell caches on disk from caches to build."""
    return {
        "version": CACHE_VERSION, "fingerprint": fingerprint,
        "size": profile.data.image_size,
        **prefix_identity(variant, profile, weights_id, init_seed),
        "prefix_depth": prefix_depth(variant),
        "views": cache_views(profile, augment), "seed": augment_seed if augment else None,
        "augment": asdict(augment_cfg) if augment else None, "precision": precision,
    }


class Engine:
    """Builds the split VGG19 for ``variant`` and trains/predicts it under ``profile``.

    ``weights``: ``auto | imagenet | random`` or a weights-file path (default: profile's).
    ``weights_id`` records what was actually loaded. ``cached`` tells whether ``prefix_features``
    returns bf16 activations (feature cache) or the raw uint8 images (whole-network training
    with on-the-fly augmentation: ``feature_cache = false`` or ``unfreeze_blocks = 5``).
    """

    def __init__(self, variant: Variant, profile: Profile, device: str | None = None,
                 weights: str | os.PathLike | None = None, cache_dir: str | Path | None = None,
                 init_seed: int = 0, augment_seed: int = 0, progress: bool | None = None,
                 augment_cfg: AugmentConfig = DEFAULT_AUGMENT):
        self.variant, self.profile = variant, profile
        t = profile.train
        self.runtime = resolve_runtime(device or profile.device, t.precision, t.channels_last,
                                       t.compile)
        loaded = resolve_weights(weights if weights is not None else profile.model.weights,
                                 profile.model.width)
        self.weights_id = loaded.weights_id
        self.init_seed, self.augment_seed = init_seed, augment_seed
        self.progress, self.augment_cfg = progress, augment_cfg
        m = profile.model
        self.model: VGG19Variant = build_vgg19(
            in_channels=variant.in_channels, unfreeze_blocks=variant.unfreeze_blocks,
            dropout_p=m.dropout_p if variant.dropout else None, head_hidden=m.head_hidden,
            width=m.width, size=profile.data.image_size, features_state=loaded.state,
            init_seed=init_seed, small_map_conv=t.small_map_conv)
        self.model.to(self.runtime.device, memory_format=self.runtime.memory_format)
        self._initial_suffix = copy.deepcopy(self.model.suffix.state_dict())
        self.cached = uses_feature_cache(variant, profile)
        self.cache = FeatureCache(cache_dir)

    def n_views(self, augment: bool) -> int:
        return cache_views(self.profile, augment)

    def cache_key(self, fingerprint: str, augment: bool) -> dict:
        return feature_cache_key(self.variant, self.profile, fingerprint=fingerprint,
                                 weights_id=self.weights_id, augment=augment,
                                 init_seed=self.init_seed, augment_seed=self.augment_seed,
                                 precision=self.runtime.precision, augment_cfg=self.augment_cfg)

    @property
    def prefix_identity(self) -> dict:
        return prefix_identity(self.variant, self.profile, self.weights_id, self.init_seed)

    def prefix_features(self, images: np.ndarray | LazyImages, augment: bool | None = None,
                        wait: bool = True) -> torch.Tensor:
        """(N, V, C, h, w) bf16 prefix activations (view 0 = identity), loaded from the cache
        when present; or (N, 1, 3, S, S) uint8 images when the engine is not ``cached``.
        ``LazyImages`` are made only when the cache lacks their activations (shifted copies);
        ``wait=False``: ``features.CacheBusy`` when another process is computing them."""
        if not isinstance(images, LazyImages):
            images = LazyImages.of(images)
        if not self.cached:
            return self._checked(images.get()).unsqueeze(1)
        augment = self.variant.augmentation if augment is None else augment
        return self.cache.get(self.cache_key(images.key, augment), lambda: extract_prefix(
            self.model.prefix, self._checked(images.get()), self.variant.channels,
            self.n_views(augment), self.augment_seed, self.runtime,
            batch_size=self.profile.train.batch_size, augment_cfg=self.augment_cfg,
            progress=self.progress), wait=wait)

    def _checked(self, images: np.ndarray) -> torch.Tensor:
        """Images as a (N, 3, S, S) uint8 tensor, at the profile's size."""
        images_t = images_to_tensor(images)
        size = self.profile.data.image_size
        if images_t.shape[-1] != size or images_t.shape[-2] != size:
            raise ValueError(f"images are {tuple(images_t.shape[-2:])} px but the profile's "
                             f"image_size is {size}; resize them in the data layer")
        return images_t

    def _source(self, x, train: bool):
        if isinstance(x, np.ndarray):
            x = images_to_tensor(x)
        if x.dtype == torch.uint8:
            return ImageSource(x, self.model.prefix, self.variant.channels,
                               train and self.variant.augmentation, self.runtime, self.augment_cfg)
        return CachedSource(x, self.runtime)

    def fresh_suffix(self, seed: int):
        """The initial suffix (pretrained/initial conv blocks) with a head drawn from ``seed``."""
        suffix = copy.deepcopy(self.model.suffix)
        suffix.load_state_dict(self._initial_suffix)
        init_head_(suffix.head, torch.Generator().manual_seed(seed))
        return suffix.to(self.runtime.device, memory_format=self.runtime.memory_format)

    def fit(self, x_train, y_train, x_val, y_val, hyper: Hyper | None = None, seed: int = 0,
            on_epoch=None, history_csv: str | Path | None = None, epochs: int | None = None,
            desc: str | None = None) -> FitResult:
        """Train a fresh suffix; ``x_*`` are slices of ``prefix_features`` output."""
        t = self.profile.train
        hyper = hyper or Hyper(self.variant.optimizer, self.variant.learning_rate, t.weight_decay)
        return fit(self.fresh_suffix(seed), self._source(x_train, True), y_train,
                   self._source(x_val, False), y_val, hyper, runtime=self.runtime,
                   epochs=epochs or t.epochs, batch_size=t.batch_size, patience=t.patience,
                   momentum=t.momentum, class_weighting=t.class_weighting, seed=seed,
                   on_epoch=on_epoch, history_csv=history_csv, progress=self.progress,
                   desc=desc or self.variant.name)

    def predict(self, state_dict: dict, x, labels=None, groups=None, mc_samples: int | None = None,
                mc_seed: int = 0) -> ModelOutputs:
        """Outputs on ``x`` (view-0 activations (N, C, h, w), or uint8 images NHWC / (N,3,S,S));
        ``mc_samples`` defaults to the profile's ``evaluate.mc_samples``."""
        suffix = self.fresh_suffix(0)
        suffix.load_state_dict(state_dict)
        mc = self.profile.evaluate.mc_samples if mc_samples is None else mc_samples
        return predict_outputs(suffix, self._source(x, False), runtime=self.runtime,
                               labels=labels, groups=groups, mc_samples=mc, mc_seed=mc_seed,
                               batch_size=self.profile.train.batch_size * 2)

    def full_model(self, state_dict: dict) -> VGG19Variant:
        """Whole network (eval mode, on the engine's device) taking float images in [0, 1],
        (N, 1, S, S) for grey variants, (N, 3, S, S) for RGB; for new images and Grad-CAM."""
        return with_state(self.model, state_dict).eval()
