"""``run_study(StudyConfig) -> StudyResult``: the study's variants under grouped k-fold CV.

For each variant and outer fold: tune optimizer / learning rate / weight decay with Optuna on the
fold's training part (grouped inner folds), train the final model with the study's specified
settings and with the tuned ones, evaluate both on the held-out fold (metrics, calibration,
MC-dropout, selective prediction, conformal sets, shifts, OOD detection), add a random-forest head
on the same frozen features, and write results atomically into a resumable run folder.

This module orchestrates; fold work is ``fold.py``, the folder format ``run_folder.py``, the
command line ``cli.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import Profile
from .data import Dataset, load_dataset
from .data.cache import default_cache_dir
from .errors import ConfigError
from .fold import FoldRunner
from .groups import resolve_groups
from .io import write_csv
from .naming import RF_SETTING, rf_name
from .provenance import git_commit
from .report.comparisons import compare
from .report.leaderboard import merge_runs, summarise
from .run_folder import RunFolder
from .splits import SplitPlan, make_splits
from .study_config import StudyConfig
from .toml import loads
from .tomlw import dumps
from .tune import open_storage
from .variants import Variant, select_variants

log = logging.getLogger("smids_eval.study")

#: config.toml entries that locate the data on one machine: not part of a run's identity
#: (the content fingerprint is), so a fresh clone can resume or reproduce a committed run
_MACHINE_LOCAL = {("data", "root"), ("data", "origin")}


@dataclass
class StudyContext:
    """Everything one run shares across variants and folds, resolved once from the config."""

    config: StudyConfig
    variants: list[Variant]
    profile: Profile
    dataset: Dataset
    groups: np.ndarray
    grouping: str
    plan: SplitPlan
    run: RunFolder
    storage: object
    far_ood: dict[str, np.ndarray]
    provenance: dict
    cache_dir: Path

    @property
    def rf_enabled(self) -> bool:
        """The one place that decides whether random-forest heads are part of this run."""
        return self.profile.evaluate.rf and self.config.rf

    @property
    def seed(self) -> int:
        return self.config.seed

    def arms(self, variant: Variant) -> list[tuple[str, str]]:
        """(arm name, setting) of every result a variant contributes to one fold."""
        arms = [(variant.name, s) for s in self.config.settings]
        if self.rf_enabled:
            arms.append((rf_name(variant.name), RF_SETTING))
        return arms

    def folds(self) -> list[int]:
        folds = sorted(set(self.config.only_folds)) or list(range(self.plan.n_outer))
        bad = [f for f in folds if not 0 <= f < self.plan.n_outer]
        if bad:
            raise ConfigError(f"--fold {bad}: folds are numbered 0..{self.plan.n_outer - 1}")
        return folds


@dataclass
class StudyResult:
    """A finished (or resumed) study: its run folder and its fold rows."""

    run: RunFolder
    folds: pd.DataFrame
    context: StudyContext

    @property
    def leaderboard(self) -> pd.DataFrame:
        return pd.read_csv(self.run.leaderboard) if self.run.leaderboard.is_file() else pd.DataFrame()


def run_name(config: StudyConfig, profile: Profile, dataset: Dataset) -> str:
    if config.run_name:
        return config.run_name
    label = "synthetic" if dataset.source.origin == "synthetic" else dataset.root.resolve().name
    split = "" if config.grouped else "-random-split"
    return (f"{profile.name}-{label}-{dataset.fingerprint[:8]}-k{profile.cv.outer_folds}"
            f"-seed{config.seed}{split}")


def prepare(config: StudyConfig) -> StudyContext:
    """Validate everything and lay out the run folder before any training starts."""
    variants = select_variants(list(config.variants))  # unknown names fail here
    profile = config.resolve_profile(torch.cuda.is_available())
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    dataset = load_dataset(config.data_dir, size=profile.data.image_size, cache_dir=cache_dir,
                           synthetic_images=profile.data.synthetic_images,
                           synthetic_seed=config.seed)
    log.info("data: %s — %d images, fingerprint %s", dataset.source.describe(), len(dataset),
             dataset.fingerprint)
    groups, grouping = resolve_groups(dataset, config.groups_file, n_groups=config.n_groups,
                                      seed=config.seed)
    log.info("groups: %s (%d groups)", grouping, len(np.unique(groups)))
    plan = make_splits(dataset.labels, groups, profile.cv.outer_folds, profile.cv.inner_folds,
                       config.seed, grouped=config.grouped)
    run = RunFolder(Path(config.out) / run_name(config, profile, dataset))
    saved = run_config(config, profile, dataset, grouping, run)
    _check_config(run, saved)
    storage = open_storage(config.storage, run.root)
    run.write_config(saved)
    write_csv(run.splits, plan.to_frame(dataset.paths))
    provenance = {
        "run": run.root.name, "run_commit": git_commit(), "run_profile": profile.name,
        "run_grouping": grouping, "run_split": config.split,
        "run_data_source": dataset.source.origin, "run_data_fingerprint": dataset.fingerprint,
        "run_seed": config.seed,
    }
    return StudyContext(config, variants, profile, dataset, groups, grouping, plan, run, storage,
                        far_ood_images(profile, config), provenance, cache_dir)


def run_config(config: StudyConfig, profile: Profile, dataset: Dataset, grouping: str,
               run: RunFolder) -> dict:
    """What ``config.toml`` records: the resolved settings, and the data source structurally."""
    source = dataset.source
    return {
        "run": run.root.name, "seed": config.seed, "split": config.split, "grouping": grouping,
        "data": {"kind": "synthetic" if source.origin == "synthetic" else "folder",
                 "origin": source.origin, "root": str(Path(source.root).resolve()),
                 "fingerprint": dataset.fingerprint, "images": len(dataset)},
        "trials": config.trials if config.trials is not None else -1,
        "profile": profile.as_dict(),
    }


def _identity(config: dict) -> dict:
    return {k: ({kk: vv for kk, vv in v.items() if (k, kk) not in _MACHINE_LOCAL}
                if isinstance(v, dict) else v) for k, v in config.items()}


def _check_config(run: RunFolder, config: dict) -> None:
    if not run.config.is_file():
        return
    old, fresh = _identity(run.read_config()), _identity(loads(dumps(config)))
    if old != fresh:
        diff = sorted(k for k in set(old) | set(fresh) if old.get(k) != fresh.get(k))
        raise ConfigError(f"run folder {run.root} was made with other settings (differs in: "
                          f"{', '.join(diff)}); pass another --run-name or --out, or delete it")


def far_ood_images(profile: Profile, config: StudyConfig) -> dict[str, np.ndarray]:
    from .evaluate.far_ood import far_ood_sets, load_folder

    n, size = profile.evaluate.far_ood_images, profile.data.image_size
    sets = far_ood_sets(n, size, seed=config.seed) if n > 0 else {}
    if config.ood_dir:
        sets["user"] = load_folder(config.ood_dir, size).images
    return sets


# --------------------------------------------------------------------------- orchestration


def run_study(config: StudyConfig) -> StudyResult:
    """Run (or resume) a study: every variant × fold × setting not done yet, then the tables."""
    return run_prepared(prepare(config))


def run_prepared(ctx: StudyContext) -> StudyResult:
    """Every variant × fold × setting not done yet (all of them with ``force``), then the CSVs."""
    config = ctx.config
    folds = ctx.folds()
    per_fold = len(config.settings) + (1 if ctx.rf_enabled else 0)
    bar = tqdm(total=len(ctx.variants) * len(folds) * per_fold, desc="study", unit="fit",
               disable=not config.progress, dynamic_ncols=True)
    rf_memo: dict = {}
    for variant in ctx.variants:
        pending = [f for f in folds if config.force
                   or not all(ctx.run.done(n, f, s) for n, s in ctx.arms(variant))]
        bar.update(per_fold * (len(folds) - len(pending)))
        if not pending:
            log.info("%s: every fold already done (use --force to redo)", variant.name)
            continue
        runner = FoldRunner(ctx, variant, rf_memo)
        for fold in pending:
            bar.set_description(f"study {variant.name} fold {fold} [0-{ctx.plan.n_outer - 1}]")
            runner.run(fold, bar)
    bar.close()
    frame = write_tables(ctx.run, Path(config.out))
    log.info("results in %s", ctx.run.root)
    return StudyResult(ctx.run, frame, ctx)


def write_tables(run: RunFolder, out: Path) -> pd.DataFrame:
    """folds.csv, the run's leaderboard and comparisons, and the cross-run tables in ``out``."""
    folds = run.write_folds_csv()
    if folds.empty:
        return folds
    write_csv(run.leaderboard, summarise(folds))
    write_csv(run.comparisons, compare(folds))
    boards, comps = [], []
    for board_path in sorted(out.glob("*/leaderboard.csv")):
        boards.append(pd.read_csv(board_path))
        comp_path = board_path.with_name("comparisons.csv")
        if comp_path.is_file() and comp_path.stat().st_size > 1:
            comp = pd.read_csv(comp_path)
            comp.insert(0, "run", board_path.parent.name)
            comps.append(comp)
    write_csv(out / "leaderboard.csv", merge_runs(boards))
    if comps:
        write_csv(out / "comparisons.csv", pd.concat(comps, ignore_index=True))
    return folds


if __name__ == "__main__":
    import sys

    from smids_eval.cli import module_main

    sys.exit(module_main("study"))
