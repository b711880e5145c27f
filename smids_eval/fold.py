"""One variant's outer folds: tuning, final models for each setting, the random-forest head,
evaluation, and the fold's files (through ``RunFolder``). Knows nothing of the CLI."""

from __future__ import annotations

import logging
import multiprocessing
import time
from dataclasses import asdict
from functools import partial

import numpy as np
import pandas as pd
import torch

from . import CLASSES
from .claims import Claims
from .config import load_search_space
from .data import class_slug
from .device import compute_threads, hardware
from .engine import Engine
from .evaluate import batch_shift_keys, evaluate_fold, fit_batch_test, fit_confidence_artifacts
from .evaluate.descriptors import DESCRIPTORS, DescriptorCache
from .evaluate.ood import DETECTORS
from .evaluate.rf_head import RandomForestHead
from .features import CacheBusy, LazyImages
from .io import write_csv
from .naming import RF_SETTING, rf_name
from .outputs import ModelOutputs
from .run_folder import SavedFold, claim_key
from .timing import StageTimer
from .train import FitResult, Hyper
from .tune import study_name, trial_budget, tune
from .variants import Variant

log = logging.getLogger("smids_eval.study")

#: trials' inner-fold-0 fits kept while a fold is tuned (the lowest-scoring is dropped first):
#: the best one is the tuned arm's final fit. A head's state is small; an unfrozen block 5 is
#: ~38 MB, hence a bound rather than every trial
FIRST_FITS_KEPT = 4


def pooled(features: torch.Tensor) -> np.ndarray:
    """Global-average-pooled view-0 activations (N, C): the random-forest head's input."""
    x = features[:, 0]
    if x.dtype == torch.uint8:
        raise ValueError("the random-forest head needs cached frozen features (feature_cache=true)")
    return x.float().mean(dim=(-1, -2)).numpy()


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)


#: per-image columns of ``ConfidenceArtifacts.apply`` kept with the held-out predictions: what
#: ``predict`` would say of each held-out crop (false alarms, referrals and conformal sets by
#: acquisition group are read from them)
CONFIDENCE_COLUMNS = ("ood_score", "in_distribution", "conformal_set", "confident", "decision",
                      "refer_reason")


def prediction_frame(ctx, index: np.ndarray, outputs: ModelOutputs, repeat: int, fold: int,
                     variant: str, setting: str,
                     confidence: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-image probabilities of the held-out fold, so every metric can be recomputed, and
    (``confidence``) the fold model's confidence index of each crop."""
    probs = outputs.probs
    frame = pd.DataFrame({"path": np.asarray(ctx.dataset.paths)[index],
                          "group": ctx.groups[index], "repeat": repeat, "fold": fold,
                          "variant": variant,
                          "setting": setting, "label": np.asarray(CLASSES)[ctx.dataset.labels[index]],
                          "predicted": np.asarray(CLASSES)[probs.argmax(1)]})
    for k, name in enumerate(CLASSES):
        frame[f"prob_{class_slug(name)}"] = probs[:, k]
    if outputs.mc_probs is not None:
        mean = outputs.mc_probs.mean(0)
        for k, name in enumerate(CLASSES):
            frame[f"mc_prob_{class_slug(name)}"] = mean[:, k]
    if confidence is not None:
        for col in CONFIDENCE_COLUMNS:
            frame[col] = confidence[col].to_numpy()
    return frame


def tuned_hyper(ctx, variant: Variant, repeat: int, fold: int, fit_inner) -> dict:
    """Optuna over grouped inner folds of the outer training part; returns best params + info."""
    p, config = ctx.profile, ctx.config
    n_trials, n_inner = trial_budget(p.tune, config.trials, bool(variant.unfreeze_blocks),
                                     ctx.plan.n_inner)

    def objective(params: dict, report) -> float:
        scores = []
        for j in range(n_inner):
            scores.append(fit_inner(params, j))
            report(j, float(np.mean(scores)))
        return float(np.mean(scores))

    name = study_name(variant.name, fold, p.name, ctx.dataset.fingerprint, grouped=config.grouped,
                      seed=config.seed, repeat=repeat, groups=ctx.groups)
    return tune(objective, name=name, storage=ctx.storage, n_trials=n_trials,
                space=load_search_space(p.tune.search_space), seed=ctx.fold_seed(repeat, fold),
                pruner=p.tune.pruner, shared=False)  # the fold's claim makes this worker its owner


class SurplusHelper(Exception):
    """A ``--jobs`` helper process stops: more workers than cores run on this machine now, or
    the study that started it has ended (killed)."""


def parent_gone() -> bool:
    """Whether this process is a spawned helper whose parent process has died: it then stops
    before its next arm instead of computing unattended (what it finished is kept, and a rerun
    resumes the rest)."""
    parent = multiprocessing.parent_process()
    return parent is not None and not parent.is_alive()


class FoldRunner:
    """Builds the variant's engine and frozen features once, then runs fold after fold.

    ``ctx`` is the study's ``StudyContext`` (config, profile, data, groups, splits, run folder);
    ``timer`` collects the run's stage times (features, tuning, final_fits, evaluation, saving,
    rf_head) for ``timings.json``; ``shared`` memoises what several variants of the run compute
    identically (random-forest heads, acquisition descriptors) and holds the process's
    ``Claims`` (work is claimed once across workers, claims.py).
    """

    def __init__(self, ctx, variant: Variant, shared: dict, timer: StageTimer | None = None):
        self.ctx, self.variant, self.shared = ctx, variant, shared
        self.claims: Claims = shared["claims"]   # this process's, registered by run_prepared
        self.timer = timer or StageTimer()
        self.rf_name = rf_name(variant.name)
        p, seed = ctx.profile, ctx.config.seed
        self.descriptor_cache = DescriptorCache(ctx.cache_dir / "descriptors")
        with self.timer.stage("features"):
            self.engine = Engine(variant, p, device=p.device, weights=p.model.weights,
                                 cache_dir=ctx.cache_dir / "features", init_seed=seed,
                                 augment_seed=seed, progress=ctx.config.progress)
            log.info("%s: weights %s on %s", variant.name, self.engine.weights_id,
                     self.engine.runtime.describe())
            self.features = self.engine.prefix_features(
                LazyImages.named(ctx.dataset.fingerprint, ctx.dataset.images))
            far = {name: LazyImages.of(images) for name, images in ctx.far_ood.items()}
            self.far_features = {name: self._features(images) for name, images in far.items()}
            self.descriptors = self._describe("data", LazyImages.of(ctx.dataset.images))
            self.far_descriptors = {name: self._describe(f"far:{name}", images)
                                    for name, images in far.items()}
        self.prov = {**ctx.provenance, "run_device": self.engine.runtime.describe(),
                     "run_hardware": hardware(self.engine.runtime.device),
                     "run_precision": self.engine.runtime.precision,
                     "run_weights": self.engine.weights_id}

    def _features(self, images: LazyImages, wait: bool = True) -> torch.Tensor:
        """View-0 prefix activations of extra images (shifted or OOD), via the feature cache."""
        return self.engine.prefix_features(images, augment=False, wait=wait)[:, 0]

    def _describe(self, name: str, images: LazyImages, names=DESCRIPTORS,
                  wait: bool = True) -> dict[str, np.ndarray]:
        """Acquisition descriptors ``names`` of an image set: image statistics per set, block
        moments per set and input pipeline (channels, weights). Computed once: kept in
        ``shared`` for this process's variants, and in the ``DescriptorCache`` on disk for
        other processes, twins and later runs."""
        res = {}
        for d in names:
            key = ((d, name) if d == "image_stats" else
                   (d, name, self.variant.channels, self.engine.weights_id))
            if key not in self.shared:
                self.shared[key] = self.descriptor_cache.get(
                    d, images, self.engine.model.prefix, self.engine.prefix_identity,
                    wait=wait)
            if self.shared[key] is not None:
                res[d] = self.shared[key]
        return res

    def _pick(self, descriptors: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in descriptors.items()}

    # ------------------------------------------------------------------ per fold
    def run(self, repeat: int, fold: int, bar) -> None:
        """Every arm this variant computes for outer fold ``fold`` of repeat ``repeat``."""
        ctx, v = self.ctx, self.variant
        plan = ctx.plans[repeat]
        self.repeat, self.split = repeat, plan
        train_idx, test_idx = plan.outer(fold)
        inner_train, inner_val = plan.inner(fold, 0)
        shift = None  # the fold's shifted copies, made once this worker computes one of its arms
        computed = {s for arm, s in ctx.arms(v) if arm == v.name}
        arms = [(v.name, s) for s in ctx.config.settings if s in computed]
        if (self.rf_name, RF_SETTING) in ctx.arms(v):
            arms.append((self.rf_name, RF_SETTING))
        for name, setting in arms:
            if ctx.run.done(name, repeat, fold, setting) and not ctx.config.force:
                bar.update(1)
                continue
            if ctx.config.helper and (self.claims.live_here() > ctx.jobs or parent_gone()):
                raise SurplusHelper  # cores taken by workers started since, or no parent
            with self.claims.claim(claim_key(name, repeat, fold, setting)) as ours, \
                    compute_threads(ctx.profile.train.cpu_threads):
                if not ours:
                    log.info("%s repeat %d fold %d %s: claimed by another worker, moving on",
                             name, repeat, fold, setting)
                elif ctx.config.force or not ctx.run.done(name, repeat, fold, setting):
                    if shift is None:
                        with self.timer.stage("features"):
                            shift = self._shifted(test_idx)
                    shift_idx, shifted, shifted_desc = shift
                    if name == self.rf_name:
                        with self.timer.stage("rf_head"):
                            self._random_forest(fold, inner_train, inner_val, test_idx,
                                                shift_idx, shifted, shifted_desc)
                    else:
                        self._neural_arm(repeat, fold, setting, inner_train, inner_val,
                                         test_idx, shift_idx, shifted, shifted_desc)
            bar.update(1)

    def _neural_arm(self, repeat, fold, setting, inner_train, inner_val, test_idx, shift_idx,
                    shifted, shifted_desc) -> None:
        """Train (after tuning, for ``tuned``), evaluate and save one neural arm of the fold."""
        ctx, v, timer = self.ctx, self.variant, self.timer
        y, seed = ctx.dataset.labels, ctx.fold_seed(repeat, fold)
        t0 = time.perf_counter()
        extra = {}
        result = None
        history_csv = ctx.run.history(v.name, repeat, fold, setting)
        if setting == "specified":
            hyper = Hyper(v.optimizer, v.learning_rate, ctx.profile.train.weight_decay)
        else:
            with timer.stage("tuning"):
                best, hyper, result = self._tune(fold)
            extra = {"tune_best_inner_macro_f1": best["best_value"],
                     "tune_trials": best["n_trials"]}
        if result is not None:
            log.info("%s repeat %d fold %d %s: the best trial's inner-fold-0 fit is the final "
                     "fit (same data, settings and seed): not trained again", v.name, repeat,
                     fold, setting)
            write_csv(history_csv, result.history)
        else:
            with timer.stage("final_fits"):
                result = self.engine.fit(
                    self.features[inner_train], y[inner_train], self.features[inner_val],
                    y[inner_val], hyper, seed=seed, history_csv=history_csv,
                    desc=f"{v.name} fold {fold} {setting}")
        with timer.stage("evaluation"):
            predict = partial(self._predict, result.state_dict)
            train_out = predict(self.features[inner_train, 0], inner_train)
            val_out = predict(self.features[inner_val, 0], inner_val)
            test_out = predict(self.features[test_idx, 0], test_idx)
            shifted_out = {k: predict(x, shift_idx, shifted_desc[k]) for k, x in shifted.items()}
            far_out = {k: predict(x, None, self.far_descriptors[k])
                       for k, x in self.far_features.items()}
            row = self._evaluate(fold, setting, train_out, val_out, test_out, shifted_out,
                                 far_out)
            row.update(hp_optimizer=hyper.optimizer, hp_learning_rate=hyper.learning_rate,
                       hp_weight_decay=hyper.weight_decay, epochs_run=result.epochs_run,
                       best_epoch=result.best_epoch, **extra)
            artifacts = self._artifacts(fold, train_out, val_out, row)
            confidence = artifacts.apply(test_out)
        model = SavedFold(variant=v.as_dict(), setting=setting, fold=fold, repeat=repeat,
                          suffix_state=result.state_dict, hyper=asdict(hyper),
                          profile=ctx.profile.as_dict(), weights=self.engine.weights_id,
                          artifacts=artifacts, provenance=self.prov)
        with timer.stage("saving"):
            self._save(row, t0, test_idx, test_out, fold, setting, model, confidence=confidence)

    def _artifacts(self, fold, train_out, val_out, row):
        """The fold model's confidence index (what ``predict`` applies), fitted on train/val
        with the temperature its metrics used and the fold's shared batch test."""
        return fit_confidence_artifacts(
            train_out, val_out, self.ctx.profile.evaluate, temperature=row["cal_temperature"],
            batch_test=self.shared.get(("batch", self.repeat, fold), (None,))[0])

    def _predict(self, state: dict, x: torch.Tensor, idx: np.ndarray | None = None,
                 descriptors: dict | None = None) -> ModelOutputs:
        """Outputs on activations ``x``; labelled, grouped and described (acquisition
        descriptors) when ``idx`` says which images; other sets pass their ``descriptors``."""
        ctx = self.ctx
        if descriptors is None and idx is not None:
            descriptors = self._pick(self.descriptors, idx)
        out = self.engine.predict(state, x, labels=None if idx is None else ctx.dataset.labels[idx],
                                  groups=None if idx is None else ctx.groups[idx],
                                  mc_seed=ctx.config.seed)
        return out.with_descriptors(descriptors)

    def _tune(self, fold: int) -> tuple[dict, Hyper, FitResult | None]:
        """The best trial's params and info, its settings, and that trial's fit on inner fold 0 when this
        process ran it and kept it: the final fit trains on the same inner fold with the same
        settings, seed and threads, so it would be the same computation (a resumed tuning, or
        a fit dropped from the ``FIRST_FITS_KEPT``, is fitted again, with the same numbers)."""
        ctx, y = self.ctx, self.ctx.dataset.labels
        first: dict[Hyper, FitResult] = {}

        def fit_inner(params: dict, j: int) -> float:
            a, b = self.split.inner(fold, j)
            result = self.engine.fit(self.features[a], y[a], self.features[b], y[b],
                                     Hyper(**params), seed=ctx.fold_seed(self.repeat, fold),
                                     desc=f"{self.variant.name} fold {fold} trial inner {j}")
            if j == 0:
                first[Hyper(**params)] = result
                if len(first) > FIRST_FITS_KEPT:
                    del first[min(first, key=lambda k: first[k].best_val_macro_f1)]
            return result.best_val_macro_f1

        best = tuned_hyper(ctx, self.variant, self.repeat, fold, fit_inner)
        hyper = Hyper(best["optimizer"], best["learning_rate"], best["weight_decay"])
        return best, hyper, first.get(hyper)

    def _shifted(self, test_idx: np.ndarray) -> tuple[np.ndarray, dict, dict]:
        """The shift panel's images in the held-out fold ``test_idx``: their indices, their
        shifted copies' activations and acquisition descriptors (through the caches: a set of
        copies is made only when its activations or descriptors are missing). Sets that
        another worker is making are left for a second pass, so workers make different sets
        at the same time instead of waiting on one."""
        panel = self.ctx.shift_panel
        pos = panel.positions(test_idx)
        features, descriptors = {}, {}
        pending, wait = list(panel.sets), False
        while pending:
            busy = []
            for name in pending:
                try:
                    features[name], descriptors[name] = self._shift_set(name, pos, wait)
                except CacheBusy:
                    busy.append(name)
            pending, wait = busy, True
        # in the panel's order, not the order the sets were made in: a table's columns must
        # not depend on which sets another worker happened to be making
        return (panel.index[pos], {n: features[n] for n in panel.sets},
                {n: descriptors[n] for n in panel.sets})

    def _shift_set(self, name: str, pos: np.ndarray, wait: bool
                   ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """One set of the panel's shifted copies, at panel positions ``pos``: activations and
        descriptors (milder severities are scored by the in-distribution rule only, so only
        its descriptor). The copies are made at most once, and dropped after."""
        cfg, panel = self.ctx.profile.evaluate, self.ctx.shift_panel
        images = LazyImages(panel.set_key(name), partial(panel.copy, self.ctx.dataset.images,
                                                         name))
        worst = name.endswith(f"_s{max(cfg.ood_severities, default=0)}")
        names = DESCRIPTORS if worst else (DETECTORS[cfg.acquisition_detector].descriptor,)
        features = self._features(images, wait)[pos]
        return features, self._pick(self._describe(f"shift:{name}", images, names, wait), pos)

    def _evaluate(self, fold, setting, train_out, val_out, test_out, shifted_out, far_out) -> dict:
        """Metrics on the held-out fold; OOD sets = far-OOD and foreign-lab sets and the
        strongest shifts (every detector), milder shifts graded (the in-distribution rule)."""
        worst = f"_s{max(self.ctx.profile.evaluate.ood_severities, default=0)}"
        ood_sets = {**far_out, **{k: o for k, o in shifted_out.items() if k.endswith(worst)}}
        graded = {k: o for k, o in shifted_out.items() if not k.endswith(worst)}
        metrics = evaluate_fold(train_out, val_out, test_out, ood_sets=ood_sets,
                                shifted=shifted_out, graded=graded,
                                config=self.ctx.profile.evaluate,
                                batch_keys=self._batch(fold, train_out, val_out, test_out,
                                                       ood_sets))
        return {"variant": None, "setting": setting, "repeat": self.repeat, "fold": fold, **metrics}

    def _batch(self, fold, train_out, val_out, test_out, ood_sets) -> dict[str, float]:
        """The fold's batch shift test and its metrics, computed once per (repeat, fold): they
        depend on the fold's images (inner train + validation, held-out, OOD sets) only, so
        every arm and head of the fold shares them."""
        key = ("batch", self.repeat, fold)
        if key not in self.shared:
            test = fit_batch_test(train_out, val_out)
            self.shared[key] = (test, batch_shift_keys(test, test_out, ood_sets))
        return self.shared[key][1]

    def _save(self, row, t0, test_idx, test_out, fold, setting, model, name=None,
              confidence=None) -> None:
        ctx = self.ctx
        name = name or self.variant.name
        train_idx = np.flatnonzero(self.split.outer_fold != fold)
        aliases = ctx.arm_table.aliases((name, setting))
        row.update(variant=name, aliases="|".join(aliases), n_train=len(train_idx),
                   n_fit=len(self.split.inner(fold, 0)[0]), n_test=len(test_idx),
                   n_groups_test=len(np.unique(ctx.groups[test_idx])),
                   wall_seconds=elapsed(t0), **self.prov)
        ctx.run.save_fold(row, prediction_frame(ctx, test_idx, test_out, self.repeat, fold, name,
                                                setting, confidence), model)
        log.info("%s repeat %d fold %d %s: macro-F1 %.3f, abnormal recall %.3f (%.0fs)", name,
                 self.repeat, fold, setting,
                 row.get("cls_macro_f1", float("nan")), row.get("cls_recall_abnormal_sperm", float("nan")),
                 row["wall_seconds"])

    # ------------------------------------------------------------------ random-forest head
    def _random_forest(self, fold, inner_train, inner_val, test_idx, shift_idx, shifted,
                       shifted_desc) -> None:
        """RF on the pooled frozen features; identical inputs (same channels and prefix) are
        fitted once and shared across variants (they differ only in the neural head)."""
        ctx, y, g = self.ctx, self.ctx.dataset.labels, self.ctx.groups
        t0 = time.perf_counter()
        key = (self.variant.channels, self.engine.model.prefix_depth, self.repeat, fold)
        x_all = pooled(self.features)
        if ("rf", *key) not in self.shared:
            rf = RandomForestHead(ctx.profile.evaluate.rf_grid(), n_jobs=torch.get_num_threads(),
                                  inner_folds=ctx.profile.cv.inner_folds,
                                  random_state=ctx.config.seed)
            self.shared[("rf", *key)] = rf.fit(x_all[inner_train], y[inner_train], g[inner_train])
        rf = self.shared[("rf", *key)]

        def out(x, idx=None, descriptors=None):
            if descriptors is None and idx is not None:
                descriptors = self._pick(self.descriptors, idx)
            return rf.outputs(x, labels=None if idx is None else y[idx],
                              groups=None if idx is None else g[idx]
                              ).with_descriptors(descriptors)

        pooled_extra = lambda t: t.float().mean(dim=(-1, -2)).numpy()  # noqa: E731
        train_out, val_out = out(x_all[inner_train], inner_train), out(x_all[inner_val], inner_val)
        test_out = out(x_all[test_idx], test_idx)
        shifted_out = {k: out(pooled_extra(x), shift_idx, shifted_desc[k])
                       for k, x in shifted.items()}
        far_out = {k: out(pooled_extra(x), None, self.far_descriptors[k])
                   for k, x in self.far_features.items()}
        row = self._evaluate(fold, RF_SETTING, train_out, val_out, test_out, shifted_out, far_out)
        row.update({f"rf_{k}": v for k, v in rf.best_params_.items()},
                   tune_best_inner_macro_f1=rf.best_score_)
        confidence = self._artifacts(fold, train_out, val_out, row).apply(test_out)
        self._save(row, t0, test_idx, test_out, fold, RF_SETTING, None, name=self.rf_name,
                   confidence=confidence)

