"""Which arms of a run are the same computation, so each is trained and reported once.

An arm is (name, setting): a neural variant under ``specified`` or ``tuned`` settings, or a
random-forest head (``F.0+RF``, ``tuned``). Within one run (same data, splits, seed, profile and
search space) two neural arms compute the same thing when their architecture and input pipeline
match (channels, augmentation, dropout, unfrozen blocks) and, for ``specified``, their optimizer
and learning rate too: the study's F.0/F.2/F.3/F.4 differ only in specified settings, so their
``tuned`` arms coincide. A random-forest head sees only the frozen prefix's view-0 features, so
it depends on channels and prefix depth alone (A.0/C.0/E.0 share one, B.0/D.0/F.0/F.2–F.4
another). The first arm in study order computes; the others are its aliases. A variant the
profile does not tune (``tune.is_tuned``) has no ``tuned`` arm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .naming import RF_SETTING, rf_name
from .variants import Variant


def arm_identity(variant: Variant, setting: str, rf: bool = False) -> tuple:
    """What makes an arm's computation distinct within one run."""
    if rf:
        return ("rf", variant.channels, variant.unfreeze_blocks)
    arch = (variant.channels, variant.augmentation, variant.dropout, variant.unfreeze_blocks)
    if setting == "tuned":
        return ("tuned", *arch)
    return ("specified", *arch, variant.optimizer, float(variant.learning_rate))


@dataclass(frozen=True)
class ArmTable:
    """Canonical arm of every arm of a run, in study order."""

    canonical: dict[tuple[str, str], tuple[str, str]]

    @classmethod
    def build(cls, variants: Sequence[Variant], settings: Sequence[str], rf: bool,
              tuned: Callable[[Variant], bool] = lambda v: True) -> ArmTable:
        first: dict[tuple, tuple[str, str]] = {}
        canonical: dict[tuple[str, str], tuple[str, str]] = {}
        for v in variants:
            arms = [((v.name, s), arm_identity(v, s)) for s in settings
                    if s != "tuned" or tuned(v)]
            if rf:
                arms.append(((rf_name(v.name), RF_SETTING), arm_identity(v, RF_SETTING, rf=True)))
            for arm, identity in arms:
                canonical[arm] = first.setdefault(identity, arm)
        return cls(canonical)

    def computes(self, arm: tuple[str, str]) -> bool:
        return self.canonical[arm] == arm

    def aliases(self, arm: tuple[str, str]) -> list[str]:
        """Names of the other arms that are this (canonical) arm's computation."""
        return [a[0] for a, c in self.canonical.items() if c == arm and a != arm]

    def computed(self) -> list[tuple[str, str]]:
        return [a for a, c in self.canonical.items() if a == c]
