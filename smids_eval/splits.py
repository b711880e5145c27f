"""Donor-grouped outer/inner cross-validation folds, the leakage check, and the split CSV.

Outer folds: ``StratifiedGroupKFold`` (k equal to the number of groups = leave-one-group-out).
Inside each outer training part, a grouped inner k-fold: fold 0 is the validation part used for
early stopping and calibration of the final model; all inner folds serve tuning. Repeated CV
re-draws the group-to-fold assignment with ``repeat_seed(seed, r)``; repeat 0 is the seed's own
assignment, so a one-repeat run and the first repeat of a longer one coincide.

``StratifiedGroupKFold`` places groups in order of their class-count spread and its ``shuffle``
only reorders ties: groups of distinct sizes and class mixes (the real copy's inferred groups)
get the same folds under every seed. Repeats after the first therefore place the groups in a
seeded random order, each into the fold that keeps class shares most even (the same criterion),
so every repeat is a different partition (``random_order_group_folds``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .errors import ConfigError, DataError


class LeakageError(DataError):
    """A donor/group appears on both sides of a split."""


def check_no_leakage(groups: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                     where: str = "split") -> None:
    """Raise LeakageError if any group is in both index sets (or an index is in both)."""
    shared = set(np.asarray(groups)[train_idx]) & set(np.asarray(groups)[test_idx])
    if shared or np.intersect1d(train_idx, test_idx).size:
        raise LeakageError(f"{where}: groups {sorted(map(str, shared))[:10]} are on both sides; "
                           "a donor must never be in training and test data of one split")


def random_order_group_folds(labels: np.ndarray, groups: np.ndarray, k: int,
                             seed: int) -> np.ndarray:
    """Fold index of every sample: groups taken in a seeded random order, each put where the
    per-class shares of the folds stay most even (ties: the smaller fold), as
    ``StratifiedGroupKFold`` does for its sorted order. Draws another order from the same
    generator in the rare case that leaves a fold empty."""
    names, group_of = np.unique(groups, return_inverse=True)
    classes, label_of = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(names), len(classes)))
    np.add.at(counts, (group_of, label_of), 1)
    totals = counts.sum(0)
    rng = np.random.default_rng(seed)
    for _ in range(100):
        per_fold, fold_of = np.zeros((k, len(classes))), np.empty(len(names), dtype=np.int64)
        for g in rng.permutation(len(names)):
            spread = []
            for f in range(k):
                per_fold[f] += counts[g]
                spread.append(np.mean(np.std(per_fold / totals, axis=0)))
                per_fold[f] -= counts[g]
            spread = np.asarray(spread)
            best = np.flatnonzero(np.isclose(spread, spread.min()))
            fold_of[g] = best[np.argmin(per_fold[best].sum(1))]
            per_fold[fold_of[g]] += counts[g]
        if (per_fold.sum(1) > 0).all():
            return fold_of[group_of]
    raise ConfigError(f"could not place {len(names)} groups into {k} non-empty folds; "
                      "use fewer folds")


def _folds(labels, groups, k: int, seed: int, grouped: bool, units=None,
           random_order: bool = False) -> np.ndarray:
    """Fold index (0..k-1) of every sample; ungrouped splits still keep ``units`` (same cell)
    together; ``random_order``: grouped folds from ``random_order_group_folds``."""
    n_groups = len(np.unique(groups))
    if grouped and n_groups < 2:
        raise ConfigError(f"grouped folds need at least 2 groups, but there is {n_groups}; "
                          "give the images more groups (--n-groups 2 or more, or a --groups-file "
                          "with 2+ groups), or use --split random")
    if grouped and k > n_groups:
        raise ConfigError(f"{k} folds need at least {k} groups, but there are {n_groups}; "
                          f"use --folds {n_groups} or fewer")
    if k < 2:
        raise ConfigError(f"folds must be ≥ 2 (got {k})")
    if grouped and random_order:
        return random_order_group_folds(labels, groups, k, seed)
    by_unit = not grouped and units is not None
    splitter = (StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
                if grouped or by_unit
                else StratifiedKFold(n_splits=k, shuffle=True, random_state=seed))
    fold = np.full(len(labels), -1, dtype=np.int64)
    split_groups = groups if grouped else units
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, split_groups)):
        fold[test] = f
    return fold


@dataclass
class SplitPlan:
    """Every fold of a study. ``outer_fold[i]`` is the outer fold where image i is tested;
    ``inner_fold[i, f]`` is the inner fold where it validates inside outer fold f (-1 = tested)."""

    groups: np.ndarray
    labels: np.ndarray
    outer_fold: np.ndarray
    inner_fold: np.ndarray
    seed: int
    grouped: bool = True
    units: np.ndarray | None = None  # same-cell units (cells.linked_units); never split

    def _check(self, train, test, where: str) -> None:
        if self.grouped:
            check_no_leakage(self.groups, train, test, where)
        if self.units is not None:
            check_no_leakage(self.units, train, test, f"{where} (same-cell units)")

    @property
    def n_outer(self) -> int:
        return int(self.outer_fold.max()) + 1

    @property
    def n_inner(self) -> int:
        return int(self.inner_fold.max()) + 1

    def outer(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        train = np.flatnonzero(self.outer_fold != f)
        test = np.flatnonzero(self.outer_fold == f)
        self._check(train, test, f"outer fold {f}")
        return train, test

    def inner(self, f: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation indices of inner fold j inside outer fold f."""
        col = self.inner_fold[:, f]
        train = np.flatnonzero((col >= 0) & (col != j))
        val = np.flatnonzero(col == j)
        self._check(train, val, f"outer fold {f}, inner fold {j}")
        return train, val

    def to_frame(self, paths: list[str], repeat: int = 0) -> pd.DataFrame:
        frame = pd.DataFrame({"path": paths, "group": self.groups, "label": self.labels,
                              "repeat": repeat, "outer_fold": self.outer_fold})
        if self.units is not None:
            frame.insert(2, "unit", self.units)
        for f in range(self.inner_fold.shape[1]):
            frame[f"inner_fold_o{f}"] = self.inner_fold[:, f]
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, seed: int, grouped: bool = True) -> SplitPlan:
        inner_cols = sorted((c for c in frame.columns if c.startswith("inner_fold_o")),
                            key=lambda c: int(c.removeprefix("inner_fold_o")))
        return cls(groups=frame["group"].to_numpy(), labels=frame["label"].to_numpy(),
                   outer_fold=frame["outer_fold"].to_numpy(),
                   inner_fold=frame[inner_cols].to_numpy(), seed=seed, grouped=grouped,
                   units=frame["unit"].to_numpy() if "unit" in frame else None)

    def check(self) -> SplitPlan:
        """Run the leakage check on every outer and inner split."""
        for f in range(self.n_outer):
            self.outer(f)
            for j in range(self.n_inner):
                self.inner(f, j)
        return self


def make_splits(labels: np.ndarray, groups: np.ndarray, outer_k: int = 5, inner_k: int = 3,
                seed: int = 0, grouped: bool = True, units: np.ndarray | None = None,
                random_order: bool = False) -> SplitPlan:
    """Deterministic grouped (or, for the optimism comparison, stratified random) nested folds;
    ``units`` (same cell or field) are kept together in every mode and checked.
    ``random_order``: grouped outer folds from ``random_order_group_folds`` (later repeats)."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    units = None if units is None else np.asarray(units)
    outer = _folds(labels, groups, outer_k, seed, grouped, units, random_order)
    inner = np.full((len(labels), outer_k), -1, dtype=np.int64)
    for f in range(outer_k):
        train = np.flatnonzero(outer != f)
        try:
            inner[train, f] = _folds(labels[train], groups[train], inner_k, seed + 1 + f, grouped,
                                     None if units is None else units[train])
        except ConfigError as exc:
            raise ConfigError(f"inner split of outer fold {f}: {exc}") from exc
    return SplitPlan(groups=groups, labels=labels, outer_fold=outer, inner_fold=inner,
                     seed=seed, grouped=grouped, units=units).check()


def repeat_seed(seed: int, repeat: int) -> int:
    """Seed of repeat ``repeat``'s folds (and of its fold-level draws): repeat 0 keeps ``seed``."""
    return seed + 1000 * repeat


def make_repeated_splits(labels: np.ndarray, groups: np.ndarray, outer_k: int = 5,
                         inner_k: int = 3, seed: int = 0, repeats: int = 1,
                         grouped: bool = True, units: np.ndarray | None = None
                         ) -> list[SplitPlan]:
    """``repeats`` independent nested fold assignments (repeated grouped k-fold CV)."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be ≥ 1 (got {repeats})")
    return [make_splits(labels, groups, outer_k, inner_k, repeat_seed(seed, r), grouped, units,
                        random_order=r > 0)
            for r in range(repeats)]


def splits_frame(plans: list[SplitPlan], paths: list[str]) -> pd.DataFrame:
    """splits.csv: one block of rows per repeat (``repeat`` column)."""
    return pd.concat([p.to_frame(paths, r) for r, p in enumerate(plans)], ignore_index=True)
