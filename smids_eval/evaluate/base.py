"""The one interface every scorer follows, and helpers shared by the scorers."""

from __future__ import annotations

from .. import CLASSES
from ..config import EvalConfig
from ..outputs import ModelOutputs

N_CLASSES = len(CLASSES)


def scaled(outputs: ModelOutputs, temperature: float) -> ModelOutputs:
    """Copy of ``outputs`` with logits divided by ``temperature`` (MC samples untouched)."""
    return ModelOutputs(logits=outputs.logits / temperature, features=outputs.features,
                        labels=outputs.labels, mc_probs=outputs.mc_probs, groups=outputs.groups)


class Scorer:
    """scikit-learn-style scorer: parameters in ``__init__``, ``fit`` learns from the training
    and inner-validation outputs and returns self, ``score`` returns ``{namespaced_key: float}``
    on held-out outputs. Learned attributes end in ``_``."""

    @classmethod
    def from_config(cls, config: EvalConfig) -> Scorer:
        return cls()

    def fit(self, train: ModelOutputs | None, val: ModelOutputs) -> Scorer:
        return self

    def score(self, test: ModelOutputs) -> dict[str, float]:
        raise NotImplementedError
