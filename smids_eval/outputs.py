"""What a trained model produces on a set of images: the common input of every scorer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np


def softmax(logits) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row maximum: the one softmax of the package
    (model outputs, temperature scaling, report figures), so every probability agrees bit for bit."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class ModelOutputs:
    """Per-image outputs of one model on one image set.

    logits:    (N, C) float, deterministic pass (dropout off)
    features:  (N, D) float, penultimate activations (input of the last linear layer)
    labels:    (N,) int class indices into ``smids_eval.CLASSES``, or None (OOD / unlabeled)
    mc_probs:  (T, N, C) softmax probabilities of T MC-dropout passes, or None when the model
               has no dropout (no fake MC numbers)
    groups:    (N,) donor/group ids, or None
    descriptors: ``{name: (N, D)}`` acquisition-level descriptors of the input images
               (``evaluate.descriptors``), or None; read by the acquisition-shift detectors

    Treat an instance as immutable: ``probs`` is computed once and cached (read-only), so derive
    new outputs with ``subset`` or ``evaluate.base.scaled`` instead of reassigning fields.
    """

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray | None = None
    mc_probs: np.ndarray | None = None
    groups: np.ndarray | None = None
    descriptors: dict[str, np.ndarray] | None = None

    @cached_property
    def probs(self) -> np.ndarray:
        """``softmax(logits)``, computed on first access; read-only so no caller can alter the
        cached copy that every scorer shares."""
        p = softmax(self.logits)
        p.flags.writeable = False
        return p

    def __len__(self) -> int:
        return len(self.logits)

    def subset(self, index) -> ModelOutputs:
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return ModelOutputs(
            logits=self.logits[index],
            features=self.features[index],
            labels=pick(self.labels),
            mc_probs=None if self.mc_probs is None else self.mc_probs[:, index],
            groups=pick(self.groups),
            descriptors=None if self.descriptors is None
            else {k: v[index] for k, v in self.descriptors.items()},
        )

    def with_descriptors(self, descriptors: dict[str, np.ndarray] | None) -> ModelOutputs:
        """The same outputs carrying ``descriptors`` of the same images."""
        return replace(self, descriptors=descriptors)
