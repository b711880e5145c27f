"""What a trained model produces on a set of images: the common input of every scorer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ModelOutputs:
    """Per-image outputs of one model on one image set.

    logits:    (N, C) float, deterministic pass (dropout off)
    features:  (N, D) float, penultimate activations (input of the last linear layer)
    labels:    (N,) int class indices into ``smids_eval.CLASSES``, or None (OOD / unlabeled)
    mc_probs:  (T, N, C) softmax probabilities of T MC-dropout passes, or None when the model
               has no dropout (no fake MC numbers)
    groups:    (N,) donor/group ids, or None
    """

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray | None = None
    mc_probs: np.ndarray | None = None
    groups: np.ndarray | None = None

    @property
    def probs(self) -> np.ndarray:
        z = self.logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

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
        )
