"""What a run is about to do, before it does it: ``--plan`` prints it without training, and
every real run logs it at its start and keeps it (with its ETA) in ``timings.json``, so the
estimate can be compared with what the run actually cost.

Counts come from the run's variants, settings and splits and from the run folder (fold results
already there are skipped on resume, unless ``force``). The ETA is a simple cost model over the
seconds per image that ``probe.py`` measures on this host (per prefix depth: ``prefix_s``
through the frozen prefix, ``train_s`` per training image of one suffix epoch):

* features: images × views × ``prefix_s`` for every feature cache a pending variant needs,
  plus, once per (channels, depth), the far-OOD images and the shift panel's copies;
  built one after the other on every core;
* training (each tuning trial on each of its inner folds, and each final fit of a specified
  arm; a tuned arm's final fit is its best trial's fit on inner fold 0): epochs × training
  images × ``train_s`` (plus ``prefix_s`` for variants trained without the cache);
* evaluation of each final fit: one forward pass (a third of ``train_s``) over the outer
  training part, the held-out fold, the shifted copies of its panel images and the far-OOD
  images, plus the metrics of every result (``EvalRates.arm_s``: the probe times them on
  random outputs of the run's first fold's sizes) and each random-forest head's forests
  (grid × inner folds + the refit, at ``EvalRates.forest_s`` per tree × image × log2 images);
* the fold work (training and evaluation) is shared by the run's worker processes
  (``--jobs``), each at the profile's ``cpu_threads``, which is where the probe times
  ``train_s``.

Early stopping is modelled by measured fractions: final fits of the committed quick runs
(real copy and synthetic) ran on average ``EARLY_STOP_FRACTION`` of their epochs, heads and
unfrozen blocks apart. ``eta_s`` uses them; ``eta_max_s`` counts every epoch. Pruned trials
are counted in full, and file writes are not modelled. Training feature caches
and shift-panel copies already on disk are not counted; far-OOD images are (their key hashes
the images).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from .device import resolve_runtime
from .engine import cache_views, feature_cache_key, prefix_depth, uses_feature_cache
from .features import FeatureCache
from .naming import is_rf
from .probe import EvalRates, EvalSizes, Rates, measure_evaluation, measure_rates
from .tune import trial_budget

#: mean epochs run / epochs allowed by the final fits of the committed quick runs at e76ac88
#: (history/*/*.csv, patience 4 of 30 epochs): heads on frozen features 21.4 of 30 (150 fits),
#: an unfrozen conv block 12.3 of 30 (F.1, 20 fits; it overfits sooner)
EARLY_STOP_FRACTION = {"head": 0.71, "unfrozen": 0.41}


class CacheSpec(NamedTuple):
    """What tells one run's frozen-feature caches apart (``Engine.cache_key`` less the
    run-wide fields: data fingerprint, weights, width, seed, precision)."""

    channels: str
    prefix_depth: int
    views: int
    image_size: int

    def describe(self) -> str:
        return (f"{self.channels} depth {self.prefix_depth} × {self.views} view"
                f"{'s' if self.views > 1 else ''}")


@dataclass(frozen=True)
class VariantPlan:
    """One variant's share of the run."""

    name: str
    results: int        # arm × fold × setting results of this variant (RF head included)
    done: int           # of which already in the run folder (0 with force)
    tunings: int        # outer folds whose tuned setting is still to run
    trials: int         # Optuna trials per tuning
    inner_folds: int    # inner folds each trial trains on
    fits: int           # training runs still to do: trials × inner folds + final fits
    eta_s: float | None     # process-seconds of its fold work, early stopping modelled
    eta_max_s: float | None = None   # ... every epoch run

    @property
    def trials_total(self) -> int:
        return self.tunings * self.trials


@dataclass(frozen=True)
class StudyPlan:
    """What ``run_study`` will do (counts) and how long it should take (``eta_s``; None when
    not probed). ``--plan`` returns this instead of a ``StudyResult``."""

    run: str
    profile: str
    device: str
    variants: tuple[VariantPlan, ...]
    settings: tuple[str, ...]
    folds: tuple[int, ...]
    repeats: int
    rf: bool
    images: int
    image_size: int
    epochs: int
    feature_caches: tuple[CacheSpec, ...]
    prefix_images: int          # image passes through a frozen prefix (features), upper bound
    features_eta_s: float | None
    eta_s: float | None         # wall: features, then the variants' fold work over the workers
    rates: dict                 # {prefix depth: Rates} measured by the probe
    workers: int = 1            # processes sharing the fold work (--jobs)
    eta_max_s: float | None = None   # as eta_s with every epoch run (no early stopping)
    evaluation: EvalRates | None = None   # metrics per result and forest fits, measured

    @property
    def results_total(self) -> int:
        return sum(v.results for v in self.variants)

    @property
    def results_done(self) -> int:
        return sum(v.done for v in self.variants)

    @property
    def trials_total(self) -> int:
        """Optuna trials still to run (every tuning runs its full budget)."""
        return sum(v.trials_total for v in self.variants)

    @property
    def fits_total(self) -> int:
        return sum(v.fits for v in self.variants)

    def summary(self) -> str:
        """One line, logged at the start of every run."""
        return (f"{len(self.variants)} variants × {len(self.settings)} settings"
                f"{' (+RF)' if self.rf else ''} × {self.repeats} repeats × {len(self.folds)} "
                f"folds (identical arms once): "
                f"{self.results_total} results, {self.results_done} done; "
                f"{self.trials_total} Optuna trials, {self.fits_total} training runs of ≤ "
                f"{self.epochs} epochs, {len(self.feature_caches)} feature caches; "
                f"{self.workers} worker{'s' if self.workers > 1 else ''}; ETA "
                f"{_duration(self.eta_s)} (at most {_duration(self.eta_max_s)})")

    def describe(self) -> str:
        """The ``--plan`` printout."""
        lines = [f"plan for run {self.run} ({self.profile} profile, {self.device})",
                 f"  {self.summary()}",
                 f"  data: {self.images} images at {self.image_size} px; settings "
                 f"{', '.join(self.settings)}; outer folds {', '.join(map(str, self.folds))}"]
        for v in self.variants:
            lines.append(f"  {v.name}: {v.results - v.done} of {v.results} results to run; "
                         f"{v.tunings} tunings × {v.trials} trials × {v.inner_folds} inner "
                         f"folds; {v.fits} training runs; {_duration(v.eta_s)} of work "
                         f"(at most {_duration(v.eta_max_s)})")
        caches = "; ".join(c.describe() for c in self.feature_caches) or "none"
        lines.append(f"  feature caches at {self.image_size} px (reused when already built): "
                     f"{caches}; {self.prefix_images} prefix passes, ETA "
                     f"{_duration(self.features_eta_s)}")
        for depth, r in sorted(self.rates.items()):
            lines.append(f"  probe, prefix depth {depth}: {r.prefix_s * 1e3:.2f} ms/image "
                         f"features, {r.train_s * 1e3:.2f} ms/image per training epoch")
        if self.evaluation is not None:
            lines.append(f"  probe, evaluation: {self.evaluation.arm_s:.2f} s of metrics per "
                         f"result; random-forest fits at {self.evaluation.forest_s * 1e9:.0f} "
                         f"ns per tree × image × log2(images)")
        lines.append(f"  ETA: features, then the fold work shared by {self.workers} worker "
                     f"process{'es' if self.workers > 1 else ''}; fits stop early at "
                     f"{EARLY_STOP_FRACTION['head']:.0%} (heads) and "
                     f"{EARLY_STOP_FRACTION['unfrozen']:.0%} (unfrozen blocks) of their epochs "
                     f"on average (the upper bound runs every epoch); pruned trials are "
                     f"counted in full")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["feature_caches"] = [c._asdict() for c in self.feature_caches]
        data.update(results_total=self.results_total, results_done=self.results_done,
                    trials_total=self.trials_total, fits_total=self.fits_total)
        return data


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan_study(ctx, probe: bool = True, rates: dict[int, Rates] | None = None,
               evaluation: EvalRates | None = None) -> StudyPlan:
    """Count the work of ``ctx`` (a ``StudyContext``) still to do; with ``probe``, measure
    this host for a few seconds and estimate how long it takes (no probe when nothing is left;
    ``rates`` and ``evaluation`` measured for another plan on this host are reused). Reads the
    run folder, writes nothing."""
    config, p = ctx.config, ctx.profile
    folds, units = ctx.folds(), ctx.units()
    n_far = sum(len(x) for x in ctx.far_ood.values())

    panel = ctx.shift_panel

    def n_shifted(unit: tuple[int, int]) -> int:
        """Shifted copies a fold evaluates: those of the shift panel's held-out images."""
        test = ctx.plans[unit[0]].outer(unit[1])[1]
        return len(panel.positions(test)) * len(panel.sets)

    todo = {v.name: {u: [(arm, s) for arm, s in ctx.arms(v)
                         if config.force or not ctx.run.done(arm, *u, s)] for u in units}
            for v in ctx.variants}
    active = [v for v in ctx.variants if any(todo[v.name].values())]
    rates = dict(rates or {})
    missing = {prefix_depth(v) for v in active} - set(rates)
    if probe and missing:
        rates.update(measure_rates(p, missing))
    if probe and active and evaluation is None:
        r0, f0 = next(u for u in units if any(todo[v.name][u] for v in active))
        inner_train, inner_val = ctx.plans[r0].inner(f0, 0)
        held_out = len(panel.positions(ctx.plans[r0].outer(f0)[1]))
        evaluation = measure_evaluation(p, EvalSizes(
            train=len(inner_train), val=len(inner_val), test=len(ctx.plans[r0].outer(f0)[1]),
            shifted={name: held_out for name in panel.sets},
            far={k: len(x) for k, x in ctx.far_ood.items()}))
    grid = p.evaluate.rf_grid()
    forests = int(np.prod([len(v) for v in grid.values()])) * p.cv.inner_folds + 1

    # features: the training caches not on disk yet, and (once per channels and depth) far-OOD
    # and shifted images
    t = p.train
    runtime = resolve_runtime(p.device, t.precision, t.channels_last, t.compile)
    store = FeatureCache(ctx.cache_dir / "features")

    def on_disk(v, fingerprint: str, augment: bool) -> bool:
        key = feature_cache_key(v, p, fingerprint=fingerprint, weights_id=ctx.weights_id,
                                augment=augment, init_seed=config.seed,
                                augment_seed=config.seed, precision=runtime.precision)
        return store.path(key).is_file()

    cached = [v for v in active if uses_feature_cache(v, p)]
    caches = list(dict.fromkeys(
        CacheSpec(v.channels, prefix_depth(v), cache_views(p, v.augmentation), p.data.image_size)
        for v in cached if not on_disk(v, ctx.dataset.fingerprint, v.augmentation)))
    passes: dict[int, int] = {}
    for c in caches:
        passes[c.prefix_depth] = passes.get(c.prefix_depth, 0) + len(ctx.dataset) * c.views
    pipelines = {(v.channels, prefix_depth(v)): v for v in cached}  # one variant for each
    for (_, d), v in pipelines.items():
        shifted = sum(len(panel) for name in panel.sets
                      if not on_disk(v, panel.set_key(name), False))
        passes[d] = passes.get(d, 0) + n_far + shifted
    features_eta = (None if not probe
                    else round(sum(n * rates[d].prefix_s for d, n in passes.items()), 1))

    variants = []
    for v in ctx.variants:
        depth, cached = prefix_depth(v), uses_feature_cache(v, p)
        n_trials, n_inner = trial_budget(p.tune, config.trials, bool(v.unfreeze_blocks),
                                         ctx.plan.n_inner)
        tunings = fits = train_images = eval_images = forest_images = results_todo = 0
        for (r, f), arms in todo[v.name].items():
            split = ctx.plans[r]
            neural = [s for arm, s in arms if not is_rf(arm)]
            results_todo += len(arms)
            n = len(split.inner(f, 0)[0])
            forest_images += sum(is_rf(arm) for arm, _ in arms) * n * np.log2(max(n, 2))
            if any(s != "specified" for s in neural):   # fold.py: every other setting is tuned
                tunings += 1
                fits += n_trials * n_inner
                train_images += n_trials * sum(len(split.inner(f, j)[0]) for j in range(n_inner))
            final = sum(s == "specified" for s in neural)   # a tuned arm's final fit is its
            fits += final                                    # best trial's (fold.py)
            train_images += final * len(split.inner(f, 0)[0])
            outer_train, test = split.outer(f)
            eval_images += len(neural) * (len(outer_train) + len(test) + n_shifted((r, f)) + n_far)
        eta = eta_max = None
        if probe:
            r: Rates = rates.get(depth, Rates(0.0, 0.0))   # absent: nothing left to train
            prefix = 0.0 if cached else r.prefix_s
            metrics = 0.0 if evaluation is None else (
                results_todo * evaluation.arm_s
                + forests * p.evaluate.rf_trees * forest_images * evaluation.forest_s)
            forward = eval_images * (r.train_s / 3 + prefix) + metrics
            epoch = train_images * (r.train_s + prefix)
            stop = EARLY_STOP_FRACTION["unfrozen" if v.unfreeze_blocks else "head"]
            eta = round(p.train.epochs * stop * epoch + forward, 1)
            eta_max = round(p.train.epochs * epoch + forward, 1)
        results = len(ctx.arms(v)) * len(units)
        pending = sum(len(arms) for arms in todo[v.name].values())
        variants.append(VariantPlan(
            name=v.name, results=results, done=results - pending, tunings=tunings,
            trials=n_trials, inner_folds=n_inner, fits=fits, eta_s=eta, eta_max_s=eta_max))

    workers = 1 if config.force else ctx.jobs   # --force starts no helpers
    eta_s = eta_max_s = None
    if probe:
        eta_s = round(features_eta + sum(v.eta_s for v in variants) / workers, 1)
        eta_max_s = round(features_eta + sum(v.eta_max_s for v in variants) / workers, 1)
    return StudyPlan(
        run=ctx.run.root.name, profile=p.name, device=runtime.describe(),
        variants=tuple(variants), settings=tuple(config.settings), folds=tuple(folds),
        repeats=ctx.repeats,
        rf=ctx.rf_enabled, images=len(ctx.dataset), image_size=p.data.image_size,
        epochs=p.train.epochs, feature_caches=tuple(caches),
        prefix_images=sum(passes.values()),
        features_eta_s=features_eta, eta_s=eta_s, eta_max_s=eta_max_s,
        rates=rates, workers=workers, evaluation=evaluation)
