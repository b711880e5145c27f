"""One variant's outer folds: tuning, final models for each setting, the random-forest head,
evaluation, and the fold's files (through ``RunFolder``). Knows nothing of the CLI."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from functools import partial

import numpy as np
import pandas as pd
import torch

from . import CLASSES
from .config import load_search_space
from .data import class_slug
from .engine import Engine
from .evaluate import evaluate_fold, fit_confidence_artifacts
from .evaluate.rf_head import RandomForestHead
from .evaluate.shifts import SHIFTS, shifted_copies
from .naming import RF_SETTING, rf_name
from .outputs import ModelOutputs
from .run_folder import SavedFold
from .train import Hyper
from .tune import study_name, tune
from .variants import Variant

log = logging.getLogger("smids_eval.study")


def pooled(features: torch.Tensor) -> np.ndarray:
    """Global-average-pooled view-0 activations (N, C): the random-forest head's input."""
    x = features[:, 0]
    if x.dtype == torch.uint8:
        raise ValueError("the random-forest head needs cached frozen features (feature_cache=true)")
    return x.float().mean(dim=(-1, -2)).numpy()


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)


def prediction_frame(ctx, index: np.ndarray, outputs: ModelOutputs, fold: int, variant: str,
                     setting: str) -> pd.DataFrame:
    """Per-image probabilities of the held-out fold, so every metric can be recomputed."""
    probs = outputs.probs
    frame = pd.DataFrame({"path": np.asarray(ctx.dataset.paths)[index],
                          "group": ctx.groups[index], "fold": fold, "variant": variant,
                          "setting": setting, "label": np.asarray(CLASSES)[ctx.dataset.labels[index]],
                          "predicted": np.asarray(CLASSES)[probs.argmax(1)]})
    for k, name in enumerate(CLASSES):
        frame[f"prob_{class_slug(name)}"] = probs[:, k]
    if outputs.mc_probs is not None:
        mean = outputs.mc_probs.mean(0)
        for k, name in enumerate(CLASSES):
            frame[f"mc_prob_{class_slug(name)}"] = mean[:, k]
    return frame


def tuned_hyper(ctx, variant: Variant, fold: int, fit_inner) -> dict:
    """Optuna over grouped inner folds of the outer training part; returns best params + info."""
    p, config = ctx.profile, ctx.config
    n_trials = config.trials or (p.tune.trials_unfrozen if variant.unfreeze_blocks else p.tune.trials)
    n_inner = ctx.plan.n_inner
    if variant.unfreeze_blocks and p.tune.unfrozen_inner_folds:
        n_inner = min(n_inner, p.tune.unfrozen_inner_folds)

    def objective(params: dict, report) -> float:
        scores = []
        for j in range(n_inner):
            scores.append(fit_inner(params, j))
            report(j, float(np.mean(scores)))
        return float(np.mean(scores))

    name = study_name(variant.name, fold, p.name, ctx.dataset.fingerprint, grouped=config.grouped)
    return tune(objective, name=name, storage=ctx.storage, n_trials=n_trials,
                space=load_search_space(p.tune.search_space), seed=config.seed + fold,
                pruner=p.tune.pruner, shared=config.storage is not None)


class FoldRunner:
    """Builds the variant's engine and frozen features once, then runs fold after fold.

    ``ctx`` is the study's ``StudyContext`` (config, profile, data, groups, splits, run folder).
    """

    def __init__(self, ctx, variant: Variant, rf_memo: dict):
        self.ctx, self.variant, self.rf_memo = ctx, variant, rf_memo
        self.rf_name = rf_name(variant.name)
        p, seed = ctx.profile, ctx.config.seed
        self.engine = Engine(variant, p, device=p.device, weights=p.model.weights,
                             cache_dir=ctx.cache_dir / "features", init_seed=seed,
                             augment_seed=seed, progress=ctx.config.progress)
        log.info("%s: weights %s on %s", variant.name, self.engine.weights_id,
                 self.engine.runtime.describe())
        self.features = self.engine.prefix_features(ctx.dataset.images,
                                                    fingerprint=ctx.dataset.fingerprint)
        self.far_features = {name: self._features(images) for name, images in ctx.far_ood.items()}
        self.prov = {**ctx.provenance, "run_device": self.engine.runtime.describe(),
                     "run_precision": self.engine.runtime.precision,
                     "run_weights": self.engine.weights_id}

    def _features(self, images: np.ndarray) -> torch.Tensor:
        """View-0 prefix activations of extra images (shifted or OOD), via the feature cache."""
        return self.engine.prefix_features(images, augment=False)[:, 0]

    # ------------------------------------------------------------------ per fold
    def run(self, fold: int, bar) -> None:
        ctx, v = self.ctx, self.variant
        y, plan = ctx.dataset.labels, ctx.plan
        train_idx, test_idx = plan.outer(fold)
        inner_train, inner_val = plan.inner(fold, 0)
        shift_idx, shifted = self._shifted(fold, test_idx)
        force, seed = ctx.config.force, ctx.config.seed
        for setting in ctx.config.settings:
            if ctx.run.done(v.name, fold, setting) and not force:
                bar.update(1)
                continue
            t0 = time.perf_counter()
            extra = {}
            if setting == "specified":
                hyper = Hyper(v.optimizer, v.learning_rate, ctx.profile.train.weight_decay)
            else:
                best = self._tune(fold)
                hyper = Hyper(best["optimizer"], best["learning_rate"], best["weight_decay"])
                extra = {"tune_best_inner_macro_f1": best["best_value"], "tune_trials": best["n_trials"]}
            result = self.engine.fit(
                self.features[inner_train], y[inner_train], self.features[inner_val], y[inner_val],
                hyper, seed=seed + fold,
                history_csv=ctx.run.history(v.name, fold, setting),
                desc=f"{v.name} fold {fold} {setting}")
            predict = partial(self._predict, result.state_dict)
            train_out = predict(self.features[inner_train, 0], inner_train)
            val_out = predict(self.features[inner_val, 0], inner_val)
            test_out = predict(self.features[test_idx, 0], test_idx)
            shifted_out = {k: predict(x, shift_idx) for k, x in shifted.items()}
            far_out = {k: predict(x) for k, x in self.far_features.items()}
            row = self._evaluate(fold, setting, train_out, val_out, test_out, shifted_out, far_out)
            row.update(hp_optimizer=hyper.optimizer, hp_learning_rate=hyper.learning_rate,
                       hp_weight_decay=hyper.weight_decay, epochs_run=result.epochs_run,
                       best_epoch=result.best_epoch, **extra)
            artifacts = fit_confidence_artifacts(train_out, val_out, ctx.profile.evaluate,
                                                 temperature=row["cal_temperature"])
            model = SavedFold(variant=v.as_dict(), setting=setting, fold=fold,
                              suffix_state=result.state_dict, hyper=asdict(hyper),
                              profile=ctx.profile.as_dict(), weights=self.engine.weights_id,
                              artifacts=artifacts, provenance=self.prov)
            self._save(row, t0, test_idx, test_out, fold, setting, model)
            bar.update(1)
        if ctx.rf_enabled:
            if not ctx.run.done(self.rf_name, fold, RF_SETTING) or force:
                self._random_forest(fold, inner_train, inner_val, test_idx, shift_idx, shifted)
            bar.update(1)

    def _predict(self, state: dict, x: torch.Tensor, idx: np.ndarray | None = None) -> ModelOutputs:
        """Outputs on activations ``x``; labelled and grouped when ``idx`` says which images."""
        ctx = self.ctx
        return self.engine.predict(state, x, labels=None if idx is None else ctx.dataset.labels[idx],
                                   groups=None if idx is None else ctx.groups[idx],
                                   mc_seed=ctx.config.seed)

    def _tune(self, fold: int) -> dict:
        ctx, y = self.ctx, self.ctx.dataset.labels

        def fit_inner(params: dict, j: int) -> float:
            a, b = ctx.plan.inner(fold, j)
            return self.engine.fit(self.features[a], y[a], self.features[b], y[b], Hyper(**params),
                                   seed=ctx.config.seed + fold,
                                   desc=f"{self.variant.name} fold {fold} trial inner {j}"
                                   ).best_val_macro_f1

        return tuned_hyper(ctx, self.variant, fold, fit_inner)

    def _shifted(self, fold: int, test_idx: np.ndarray) -> tuple[np.ndarray, dict]:
        """A seeded subsample of the held-out fold and its shifted copies' activations."""
        cfg = self.ctx.profile.evaluate
        rng = np.random.default_rng(self.ctx.config.seed + fold)
        n = min(cfg.ood_max_images, len(test_idx))
        idx = np.sort(rng.choice(test_idx, n, replace=False)) if n else test_idx[:0]
        if n == 0 or not cfg.ood_severities:
            return idx, {}
        copies = shifted_copies(self.ctx.dataset.images[idx], cfg.ood_severities,
                                seed=self.ctx.config.seed + fold, names=list(SHIFTS))
        return idx, {k: self._features(x) for k, x in copies.items()}

    def _evaluate(self, fold, setting, train_out, val_out, test_out, shifted_out, far_out) -> dict:
        """Metrics on the held-out fold; OOD sets = far-OOD sets and the strongest shifts."""
        worst = max(self.ctx.profile.evaluate.ood_severities, default=None)
        ood_sets = {**far_out, **{k: o for k, o in shifted_out.items() if k.endswith(f"_s{worst}")}}
        metrics = evaluate_fold(train_out, val_out, test_out, ood_sets=ood_sets,
                                shifted=shifted_out, config=self.ctx.profile.evaluate)
        return {"variant": None, "setting": setting, "fold": fold, **metrics}

    def _save(self, row, t0, test_idx, test_out, fold, setting, model, name=None) -> None:
        ctx = self.ctx
        name = name or self.variant.name
        train_idx = np.flatnonzero(ctx.plan.outer_fold != fold)
        row.update(variant=name, n_train=len(train_idx), n_test=len(test_idx),
                   n_groups_test=len(np.unique(ctx.groups[test_idx])),
                   wall_seconds=elapsed(t0), **self.prov)
        ctx.run.save_fold(row, prediction_frame(ctx, test_idx, test_out, fold, name, setting), model)
        log.info("%s fold %d %s: macro-F1 %.3f, abnormal recall %.3f (%.0fs)", name, fold, setting,
                 row.get("cls_macro_f1", float("nan")), row.get("cls_recall_abnormal_sperm", float("nan")),
                 row["wall_seconds"])

    # ------------------------------------------------------------------ random-forest head
    def _random_forest(self, fold, inner_train, inner_val, test_idx, shift_idx, shifted) -> None:
        """RF on the pooled frozen features; identical inputs (same channels and prefix) are
        fitted once and shared across variants (they differ only in the neural head)."""
        ctx, y, g = self.ctx, self.ctx.dataset.labels, self.ctx.groups
        t0 = time.perf_counter()
        key = (self.variant.channels, self.engine.model.prefix_depth, fold)
        x_all = pooled(self.features)
        if key not in self.rf_memo:
            rf = RandomForestHead(ctx.profile.evaluate.rf_grid(), n_jobs=2,
                                  inner_folds=ctx.profile.cv.inner_folds,
                                  random_state=ctx.config.seed)
            self.rf_memo[key] = rf.fit(x_all[inner_train], y[inner_train], g[inner_train])
        rf = self.rf_memo[key]
        out = lambda x, idx=None: rf.outputs(  # noqa: E731
            x, labels=None if idx is None else y[idx], groups=None if idx is None else g[idx])
        pooled_extra = lambda t: t.float().mean(dim=(-1, -2)).numpy()  # noqa: E731
        train_out, val_out = out(x_all[inner_train], inner_train), out(x_all[inner_val], inner_val)
        test_out = out(x_all[test_idx], test_idx)
        shifted_out = {k: out(pooled_extra(x), shift_idx) for k, x in shifted.items()}
        far_out = {k: out(pooled_extra(x)) for k, x in self.far_features.items()}
        row = self._evaluate(fold, RF_SETTING, train_out, val_out, test_out, shifted_out, far_out)
        row.update({f"rf_{k}": v for k, v in rf.best_params_.items()},
                   tune_best_inner_macro_f1=rf.best_score_)
        self._save(row, t0, test_idx, test_out, fold, RF_SETTING, None, name=self.rf_name)

