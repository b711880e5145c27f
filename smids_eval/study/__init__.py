"""``run_study(StudyConfig) -> StudyResult``: the study's variants under grouped k-fold CV.

For each variant and outer fold: tune optimizer / learning rate / weight decay with Optuna on the
fold's training part (grouped inner folds), train the final model with the study's specified
settings and with the tuned ones, evaluate both on the held-out fold (metrics, calibration,
MC-dropout, selective prediction, conformal sets, shifts, OOD detection), add a random-forest head
on the same frozen features, and write results atomically into a resumable run folder.

With ``plan_only`` (``--plan``) nothing is trained or written: ``run_study`` returns the
``StudyPlan`` (counts and ETA). A real run logs that plan at its start and writes what it cost
(stage times, peak memory, the bf16 matmul peak, the ETA) to ``timings.json``.

This module orchestrates; fold work is ``fold.py``, the folder format ``run_folder.py``, the
plan ``plan.py``, the cost ``timing.py``, the command line ``cli.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..arms import ArmTable
from ..claims import Claims
from ..config import Profile
from ..data import Dataset, load_dataset
from ..data.cache import default_cache_dir
from ..device import cpu_jobs, measure_bf16_peak, resolve_device
from ..errors import ConfigError
from ..evaluate.shift_panel import ShiftPanel
from ..fold import FoldRunner, SurplusHelper
from ..groups import groups_digest, resolve_groups
from ..io import ensure_output_dir, write_csv
from ..naming import RF_SETTING, rf_name
from ..plan import StudyPlan, plan_study
from ..provenance import git_commit
from ..report.comparisons import compare
from ..report.leaderboard import compact, merge_runs, merge_summaries, summarise
from ..run_folder import RunFolder
from ..splits import SplitPlan, make_repeated_splits, splits_frame
from ..study_config import StudyConfig
from ..timing import RunCost, StageTimer
from ..toml import loads
from ..tomlw import dumps
from ..tune import is_tuned, open_storage
from ..variants import Variant, select_variants
from ..weights import resolve_weights
from .jobs import start_helpers, wait_helpers

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
    plans: list[SplitPlan]          # one nested fold assignment per repeat
    run: RunFolder
    storage: object                 # Optuna storage; None until ``open_run`` (never with --plan)
    far_ood: dict[str, np.ndarray]
    provenance: dict
    cache_dir: Path
    arm_table: ArmTable | None = None
    #: copies and re-crops among the loaded images (``cells.SameCell.table``), before any
    #: ``--drop-conflicts``; written to the run folder as ``RunFolder.same_cell_csv``
    same_cell: pd.DataFrame | None = None
    #: the backbone weights every engine of the run loads (``weights.Weights.weights_id``)
    weights_id: str = "random"

    @property
    def jobs(self) -> int:
        """Worker processes on this machine (``--jobs``, 0: cores / the profile's cpu_threads)."""
        return cpu_jobs(self.config.jobs, self.profile.train.cpu_threads,
                        resolve_device(self.profile.device))

    def __post_init__(self):
        if self.arm_table is None:
            self.arm_table = ArmTable.build(self.variants, self.config.settings, self.rf_enabled,
                                            tuned=self.tunes)

    @property
    def plan(self) -> SplitPlan:
        """Repeat 0's folds (every repeat has the same number of outer and inner folds)."""
        return self.plans[0]

    @property
    def repeats(self) -> int:
        return len(self.plans)

    def tunes(self, variant: Variant) -> bool:
        """Whether ``variant`` has a tuned arm in this run (the profile's trial budget)."""
        return is_tuned(self.profile.tune, self.config.trials, bool(variant.unfreeze_blocks))

    @property
    def rf_enabled(self) -> bool:
        """The one place that decides whether random-forest heads are part of this run."""
        return self.profile.evaluate.rf and self.config.rf

    @property
    def seed(self) -> int:
        return self.config.seed

    def arms(self, variant: Variant) -> list[tuple[str, str]]:
        """(arm name, setting) of every result a variant computes for one fold: arms that are
        the same computation as an earlier variant's are that arm's aliases, not recomputed."""
        arms = [(variant.name, s) for s in self.config.settings if s != "tuned"
                or self.tunes(variant)]
        if self.rf_enabled:
            arms.append((rf_name(variant.name), RF_SETTING))
        return [a for a in arms if self.arm_table.computes(a)]

    def units(self) -> list[tuple[int, int]]:
        """(repeat, outer fold) pairs this invocation covers."""
        return [(r, f) for r in range(self.repeats) for f in self.folds()]

    def fold_seed(self, repeat: int, fold: int) -> int:
        """Seed of one outer fold's draws (training, tuning sampler)."""
        return self.config.seed + fold + 1000 * repeat

    @cached_property
    def shift_panel(self) -> ShiftPanel:
        """The images whose shifted copies every fold evaluates (its held-out ones)."""
        e = self.profile.evaluate
        return ShiftPanel.draw(len(self.dataset), e.ood_max_images, self.plan.n_outer,
                               e.ood_severities, self.seed,
                               data_key=f"{self.dataset.fingerprint}_s{self.profile.data.image_size}")

    def folds(self) -> list[int]:
        folds = sorted(set(self.config.only_folds)) or list(range(self.plan.n_outer))
        bad = [f for f in folds if not 0 <= f < self.plan.n_outer]
        if bad:
            raise ConfigError(f"--fold {bad}: folds are numbered 0..{self.plan.n_outer - 1}")
        return folds


@dataclass
class StudyResult:
    """A finished (or resumed) study: its run folder, its fold rows and what it cost."""

    run: RunFolder
    folds: pd.DataFrame
    context: StudyContext
    cost: RunCost
    complete: bool = True   # False: other workers still hold claims; the last one writes tables
    #: what this invocation wrote to ``timings.json`` (None: it wrote none, being incomplete)
    timings: dict | None = None

    @property
    def leaderboard(self) -> pd.DataFrame:
        return pd.read_csv(self.run.leaderboard) if self.run.leaderboard.is_file() else pd.DataFrame()


def run_name(config: StudyConfig, profile: Profile, dataset: Dataset) -> str:
    if config.run_name:
        return config.run_name
    label = "synthetic" if dataset.source.origin == "synthetic" else dataset.root.resolve().name
    split = "" if config.grouped else "-random-split"
    label += "-noconflicts" if config.drop_conflicts else ""
    return (f"{profile.name}-{label}-{dataset.fingerprint[:8]}-k{profile.cv.outer_folds}"
            f"-seed{config.seed}{split}")


def prepare(config: StudyConfig, write: bool = True) -> StudyContext:
    """Validate everything and (with ``write``) lay out the run folder before any training
    starts. ``write=False`` (``--plan``) reads the data and an existing run folder only."""
    variants = select_variants(list(config.variants))  # unknown names fail here
    profile = config.resolve_profile(torch.cuda.is_available())
    check_rule(profile.evaluate)
    if write:
        # before the run folder exists: a wrong --out or weights that cannot be loaded must not
        # leave a config.toml that makes the corrected rerun "made with other settings"
        ensure_output_dir(config.out, "--out")
    weights_id = resolve_weights(profile.model.weights, profile.model.width).weights_id
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    dataset = load_dataset(config.data_dir, size=profile.data.image_size, cache_dir=cache_dir,
                           synthetic_images=profile.data.synthetic_images,
                           synthetic_seed=config.seed,
                           synthetic_style=profile.data.synthetic_style)
    log.info("data: %s — %d images, fingerprint %s", dataset.source.describe(), len(dataset),
             dataset.fingerprint)
    cells = same_cell_units(dataset, cache_dir)
    same_cell, units = cells.table(dataset.paths, dataset.labels), cells.units
    if config.drop_conflicts:
        dataset, units = drop_conflicts(dataset, units)
    groups, grouping = resolve_groups(dataset, config.groups_file, n_groups=config.n_groups,
                                      seed=config.seed, units=units)
    log.info("groups: %s (%d groups)", grouping, len(np.unique(groups)))
    plans = make_repeated_splits(dataset.labels, groups, profile.cv.outer_folds,
                                 profile.cv.inner_folds, config.seed, profile.cv.repeats,
                                 grouped=config.grouped, units=units)
    run = RunFolder(Path(config.out) / run_name(config, profile, dataset))
    _check_config(run, run_config(config, profile, dataset, grouping, run, groups))
    provenance = {
        "run": run.root.name, "run_commit": git_commit(), "run_profile": profile.name,
        "run_grouping": grouping, "run_split": config.split,
        "run_data_source": dataset.source.origin, "run_data_fingerprint": dataset.fingerprint,
        "run_seed": config.seed,
    }
    ctx = StudyContext(config, variants, profile, dataset, groups, grouping, plans, run, None,
                       far_ood_images(profile, config), provenance, cache_dir,
                       same_cell=same_cell, weights_id=weights_id)
    if write:
        open_run(ctx)
    return ctx


def open_run(ctx: StudyContext) -> None:
    """The run folder's first files, for a real run only: the Optuna storage (checked before
    anything is written), ``config.toml``, ``splits.csv`` and the copies and re-crops found."""
    ctx.storage = open_storage(ctx.config.storage, ctx.run.root)
    ctx.run.write_config(run_config(ctx.config, ctx.profile, ctx.dataset, ctx.grouping, ctx.run,
                                    ctx.groups))
    write_csv(ctx.run.splits, splits_frame(ctx.plans, ctx.dataset.paths))
    if ctx.same_cell is not None:
        write_csv(ctx.run.same_cell_csv, ctx.same_cell)


def run_config(config: StudyConfig, profile: Profile, dataset: Dataset, grouping: str,
               run: RunFolder, groups) -> dict:
    """What ``config.toml`` records: the resolved settings, the data source structurally, and
    the digest of the groups (a resume under other groups, e.g. another ``--n-groups`` or an
    edited ``--groups-file``, is refused)."""
    source = dataset.source
    return {
        "run": run.root.name, "seed": config.seed, "split": config.split, "grouping": grouping,
        "groups": groups_digest(groups),
        "drop_conflicts": config.drop_conflicts,
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
        why = (" — its images were grouped differently (another --n-groups or --groups-file)"
               if "groups" in diff else "")
        raise ConfigError(f"run folder {run.root} was made with other settings (differs in: "
                          f"{', '.join(diff)}){why}; pass another --run-name or --out, or "
                          f"delete it")


def same_cell_units(dataset, cache_dir: Path | None = None):
    """``cells.SameCell`` of the data set (copies and re-crops of one cell: the unit of every
    image, the links and the file hashes; found once per data set and size, then kept under
    ``cache_dir``), logged with the units whose images carry conflicting labels."""
    from ..cells import cached_linked_units, conflicting_units, stored_links_path

    stored = None if cache_dir is None else stored_links_path(cache_dir, dataset.fingerprint,
                                                              dataset.size)
    cells = cached_linked_units(dataset.images, [dataset.root / p for p in dataset.paths],
                                dataset.sha256, stored)
    units, links = cells.units, cells.links
    conflicts = conflicting_units(units, dataset.labels)
    multi = int((np.bincount(units) > 1).sum())
    paths = np.asarray(dataset.paths)
    log.info("same-cell units: %d links join %d images into %d units of 2+ (kept together in "
             "every split); %d units mix classes (conflicting labels, kept and reported)%s",
             len(links), int(np.isin(units, np.flatnonzero(np.bincount(units) > 1)).sum()), multi,
             len(conflicts), "".join(f"\n  {' = '.join(paths[m])}" for m in conflicts[:10]))
    return cells


def drop_conflicts(dataset, units: np.ndarray):
    """``--drop-conflicts``: the data set without the images of units whose images carry
    different labels (a re-crop of one cell filed under two classes), and the remaining units."""
    from ..cells import conflicting_units

    conflicts = conflicting_units(units, dataset.labels)
    drop = np.concatenate(conflicts) if conflicts else np.empty(0, np.intp)
    keep = np.setdiff1d(np.arange(len(dataset)), drop)
    kept = dataset.without(drop)
    log.info("--drop-conflicts: %d images of %d conflicting units dropped; %d images remain "
             "(data fingerprint %s)", len(drop), len(conflicts), len(keep), kept.fingerprint)
    return kept, np.unique(units[keep], return_inverse=True)[1]


def check_rule(cfg) -> None:
    """The profile's in-distribution rule names detectors of the right level (before any
    training, so a typo costs nothing; the numbers' ranges are ``config.check_ranges``')."""
    from ..evaluate.ood import DETECTORS

    for key, level in (("acquisition_detector", "acquisition"), ("semantic_detector", "semantic")):
        name = getattr(cfg, key)
        allowed = sorted(n for n, d in DETECTORS.items() if d.level == level)
        if name not in allowed:
            raise ConfigError(f"profile [evaluate] {key} = {name!r}: use one of "
                              f"{', '.join(allowed)}")


def far_ood_images(profile: Profile, config: StudyConfig) -> dict[str, np.ndarray]:
    from ..evaluate.far_ood import far_ood_sets, load_folder

    n, size = profile.evaluate.far_ood_images, profile.data.image_size
    sets = far_ood_sets(n, size, seed=config.seed) if n > 0 else {}
    n_lab = profile.evaluate.foreign_lab_images
    if n_lab > 0:
        from ..data.foreign_lab import FOREIGN_LABS, foreign_lab_images

        for lab in FOREIGN_LABS:
            sets[f"lab_{lab}"] = foreign_lab_images(n_lab, size, seed=config.seed, lab=lab)
    if config.ood_dir:
        sets["user"] = load_folder(config.ood_dir, size).images
    return sets


# --------------------------------------------------------------------------- orchestration


def run_study(config: StudyConfig) -> StudyResult | StudyPlan:
    """Run (or resume) a study: every variant × fold × setting not done yet, then the tables.
    With ``config.plan_only``: the plan only (nothing trained, nothing written)."""
    timer = StageTimer()
    with timer.stage("prepare"):
        ctx = prepare(config, write=not config.plan_only)
    if config.plan_only:
        plan = plan_study(ctx)
        log.info("plan: %s", plan.summary())
        return plan
    return run_prepared(ctx, RunCost(timer))


def run_prepared(ctx: StudyContext, cost: RunCost | None = None) -> StudyResult:
    """Every variant × fold × setting not done yet (all of them with ``force``), then the CSVs
    and ``timings.json``. ``cost`` carries a timer (and a bf16 peak) started by the caller."""
    if ctx.storage is None:
        raise ValueError("run_prepared needs a context from prepare(config, write=True)")
    config, cost = ctx.config, cost or RunCost()
    timer = cost.timer
    if not config.helper:   # a helper writes no timings: no probes, no plan
        with timer.stage("probes"):
            device = resolve_device(ctx.profile.device)
            cost.device = str(device)
            if cost.peak_gflops is None:
                cost.peak_gflops = measure_bf16_peak(device)
            plan = plan_study(ctx)
            cost.plan = plan.as_dict()
        log.info("plan: %s (bf16 matmul peak %.0f GFLOP/s)", plan.summary(), cost.peak_gflops)
    units = ctx.units()
    bar = tqdm(total=sum(len(ctx.arms(v)) for v in ctx.variants) * len(units), desc="study",
               unit="fit", disable=not config.progress, dynamic_ncols=True)
    claims = Claims(ctx.run.root)
    claims.join()
    # what variants of this run compute identically (RF heads, descriptors), and the claims
    shared: dict = {"claims": claims}
    helpers = [] if config.helper or config.force else start_helpers(
        resume_in_helper, ctx, claims, ctx.jobs)
    try:
        _work(ctx, shared, timer, bar)
    except SurplusHelper:
        log.info("helper: stopping (more workers than --jobs on this machine now, or the study "
                 "that started it ended); a worker or a rerun does the rest")
    if config.helper:
        claims.leave()
        return StudyResult(ctx.run, pd.DataFrame(), ctx, cost, complete=False)
    if helpers:
        def progress() -> None:
            bar.n = _finished(ctx, units)
            bar.refresh()

        if (wait_helpers(helpers, progress) or _finished(ctx, units) < bar.total) \
                and not config.force:
            _work(ctx, shared, timer, bar)  # what a failed helper left (its claims are stale)
    bar.n = _finished(ctx, units)
    bar.close()
    claims.leave()
    missing = bar.total - _finished(ctx, units)
    if missing:
        log.warning("%d results are claimed by other workers and not finished yet: the last "
                    "worker to finish writes the tables", missing)
        return StudyResult(ctx.run, pd.DataFrame(), ctx, cost, complete=False)
    (claims.folder / "workers.lock").unlink(missing_ok=True)
    remove_empty_tree(claims.folder)
    with timer.stage("tables"):
        frame = write_tables(ctx.run, Path(config.out))
    timings = cost.record()
    ctx.run.write_timings(timings)
    log.info("results in %s (%.0f s; ETA was %s s)", ctx.run.root, timer.wall(),
             cost.plan.get("eta_s"))
    return StudyResult(ctx.run, frame, ctx, cost, timings=timings)


def resume_in_helper(ctx: StudyContext) -> StudyResult:
    """A ``--jobs`` helper's share of the run its parent prepared (``jobs.start_helpers``): the
    storage is the one thing a context cannot carry across processes."""
    ctx.storage = open_storage(ctx.config.storage, ctx.run.root)
    return run_prepared(ctx)


def _finished(ctx: StudyContext, units) -> int:
    return sum(ctx.run.done(n, *u, s) for v in ctx.variants for n, s in ctx.arms(v)
               for u in units)


def _work(ctx: StudyContext, shared: dict, timer: StageTimer, bar) -> None:
    """Every variant × (repeat, fold) not done yet (claimed one arm at a time)."""
    units = ctx.units()
    for variant in ctx.variants:
        arms = ctx.arms(variant)
        pending = [u for u in units if ctx.config.force
                   or not all(ctx.run.done(n, *u, s) for n, s in arms)]
        bar.update(len(arms) * (len(units) - len(pending)))
        if not pending:
            log.info("%s: every fold already done (use --force to redo)", variant.name)
            continue
        runner = FoldRunner(ctx, variant, shared, timer)
        for repeat, fold in pending:
            bar.set_description(f"study {variant.name} repeat {repeat} fold {fold} "
                                f"[0-{ctx.plan.n_outer - 1}]")
            runner.run(repeat, fold, bar)


def remove_empty_tree(folder: Path) -> None:
    """Remove ``folder`` when it holds only empty folders (the claims of a finished run)."""
    try:
        if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
            for sub in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                sub.rmdir()
            folder.rmdir()
    except OSError:  # another worker finishing at the same moment removed (or refilled) it
        pass


def write_tables(run: RunFolder, out: Path) -> pd.DataFrame:
    """folds.csv.gz and metrics.csv.gz (the same numbers, wide and long), the run's leaderboard, its
    compact summary and comparisons, and the cross-run tables in ``out``."""
    folds = run.write_folds_csv()
    if folds.empty:
        return folds
    _, parts = run.write_metrics_csv()
    board = summarise(folds, parts)
    write_csv(run.leaderboard, board)
    write_csv(run.leaderboard_summary, compact(board))
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
    write_csv(out / "leaderboard_summary.csv", merge_summaries(
        [pd.read_csv(p) for p in sorted(out.glob("*/leaderboard_summary.csv"))
         if p.stat().st_size > 1]))
    if comps:
        write_csv(out / "comparisons.csv", pd.concat(comps, ignore_index=True))
    return folds
