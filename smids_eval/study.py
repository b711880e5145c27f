"""``python -m smids_eval.study``: the study's variants under donor-grouped k-fold CV.

For each variant and outer fold: tune optimizer / learning rate / weight decay with Optuna on the
fold's training part (grouped inner folds), train the final model with the study's specified
settings and with the tuned ones, evaluate both on the held-out fold (metrics, calibration,
MC-dropout, selective prediction, conformal sets, shifts, OOD detection), add a random-forest head
on the same frozen features, and write results atomically into a resumable run folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import CLASSES
from .config import Profile, load_profile, load_search_space, resolve_profile_name
from .data import Dataset, class_slug, load_dataset
from .data.cache import default_cache_dir
from .errors import ConfigError, SmidsError
from .groups import resolve_groups
from .io import save_torch, write_csv, write_text
from .provenance import git_commit
from .report.comparisons import compare
from .report.leaderboard import merge_runs, summarise
from .run_folder import RunFolder
from .splits import SplitPlan, make_splits
from .toml import load_toml, loads
from .tomlw import dumps
from .tune import open_storage, study_name, tune
from .variants import Variant, select_variants

log = logging.getLogger("smids_eval.study")
SETTINGS = ("specified", "tuned")
RF_SUFFIX = "+RF"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smids_eval.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", metavar="NAME",
                   help="variant from studies/variants.toml (repeatable), or 'all' (default: all)")
    p.add_argument("--profile", default="auto",
                   help="quick | full | auto (full when CUDA is present, else quick) | path.toml")
    p.add_argument("--folds", type=int, help="outer folds (default: the profile's; the number of "
                   "donor groups gives leave-one-donor-out)")
    p.add_argument("--fold", type=int, action="append", metavar="K",
                   help="run only outer fold K (repeatable; default: every fold)")
    p.add_argument("--inner-folds", type=int, help="grouped inner folds for tuning (default: profile)")
    p.add_argument("--data-dir", help="class-folder data set (default: $SMIDS_DATA_DIR, else the "
                   "synthetic set)")
    p.add_argument("--groups-file", help="donor manifest CSV 'path,donor' (default: the data set's "
                   "donors.csv if present, else inferred acquisition groups)")
    p.add_argument("--n-groups", type=int, default=17, help="inferred groups (default 17 donors)")
    p.add_argument("--out", default="results", help="output folder (default: results/)")
    p.add_argument("--run-name", help="run folder name (default: PROFILE-DATA-FINGERPRINT-kK-seedS)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device (default: the profile's, auto)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="numeric precision (default: profile's; auto = bf16 where native)")
    p.add_argument("--weights", choices=["auto", "imagenet", "random"],
                   help="backbone weights (default: profile's, auto)")
    p.add_argument("--weights-file", help="VGG19 state dict to use as backbone weights")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, sampler, init (default 0)")
    p.add_argument("--trials", type=int, help="Optuna trials per variant and fold (default: profile)")
    p.add_argument("--storage", help="Optuna storage: SQLAlchemy URL (postgresql://…) or FILE.journal "
                   "shared by several workers (default: SQLite file in the run folder)")
    p.add_argument("--split", choices=["grouped", "random"], default="grouped",
                   help="donor-grouped folds (default) or a plain stratified split, to measure the "
                   "optimism that grouping removes")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="comma list of 'specified' (the study's table) and 'tuned' (default both)")
    p.add_argument("--no-rf", action="store_true", help="skip the random-forest head")
    p.add_argument("--ood-dir", help="extra folder of out-of-distribution images to test detectors on")
    p.add_argument("--cache-dir", help="decoded images and feature cache (default: $SMIDS_CACHE_DIR "
                   "or the user cache dir)")
    p.add_argument("--force", action="store_true", help="redo finished folds of the selected variants")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@dataclass
class Context:
    """Everything one run shares across variants and folds."""

    args: argparse.Namespace
    variants: list[Variant]
    profile: Profile
    dataset: Dataset
    groups: np.ndarray
    grouping: str
    plan: SplitPlan
    run: RunFolder
    storage: object
    settings: tuple[str, ...]
    far_ood: dict[str, np.ndarray]
    provenance: dict
    cache_dir: Path
    progress: bool


def _parse_settings(text: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in chosen if s not in SETTINGS]
    if bad or not chosen:
        raise ConfigError(f"--settings {text!r}: use a comma list of {', '.join(SETTINGS)}")
    return chosen


def resolve_profile(args) -> Profile:
    name = resolve_profile_name(args.profile, torch.cuda.is_available())
    profile = load_profile(name)
    train, cv, model = {}, {}, {}
    if args.precision:
        train["precision"] = args.precision
    if args.folds is not None:
        cv["outer_folds"] = args.folds
    if args.inner_folds is not None:
        cv["inner_folds"] = args.inner_folds
    if args.weights:
        model["weights"] = args.weights
    if args.weights_file:
        if not Path(args.weights_file).is_file():
            raise ConfigError(f"--weights-file {args.weights_file} does not exist")
        model["weights"] = str(Path(args.weights_file).resolve())
    profile = profile.replace(train=train, cv=cv, model=model,
                              device=args.device or profile.device)
    if profile.cv.outer_folds < 2 or profile.cv.inner_folds < 2:
        raise ConfigError(f"--folds and --inner-folds must be ≥ 2 (got {profile.cv.outer_folds}, "
                          f"{profile.cv.inner_folds})")
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be ≥ 1 (got {args.trials})")
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return profile


def run_name(args, profile: Profile, dataset: Dataset) -> str:
    if args.run_name:
        return args.run_name
    label = "synthetic" if dataset.source.origin == "synthetic" else dataset.root.resolve().name
    split = "-random-split" if args.split == "random" else ""
    return f"{profile.name}-{label}-{dataset.fingerprint[:8]}-k{profile.cv.outer_folds}-seed{args.seed}{split}"


def prepare(args) -> Context:
    """Validate everything and lay out the run folder before any training starts."""
    variants = select_variants(args.variant or ["all"])  # unknown names fail here
    settings = _parse_settings(args.settings)
    profile = resolve_profile(args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    dataset = load_dataset(args.data_dir, size=profile.data.image_size, cache_dir=cache_dir,
                           synthetic_images=profile.data.synthetic_images, synthetic_seed=args.seed)
    log.info("data: %s — %d images, fingerprint %s", dataset.source.describe(), len(dataset),
             dataset.fingerprint)
    groups, grouping = resolve_groups(dataset, args.groups_file, n_groups=args.n_groups,
                                      seed=args.seed)
    log.info("donor groups: %s (%d groups)", grouping, len(np.unique(groups)))
    plan = make_splits(dataset.labels, groups, profile.cv.outer_folds, profile.cv.inner_folds,
                       args.seed, grouped=args.split == "grouped")
    run = RunFolder(Path(args.out) / run_name(args, profile, dataset))
    config = {
        "run": run.root.name, "seed": args.seed, "split": args.split, "grouping": grouping,
        "data": {"source": dataset.source.describe(), "fingerprint": dataset.fingerprint,
                 "images": len(dataset)},
        "trials": args.trials if args.trials is not None else -1,
        "profile": profile.as_dict(),
    }
    _check_config(run, config)
    storage = open_storage(args.storage, run.root)
    write_text(run.config, dumps(config))
    write_csv(run.splits, plan.to_frame(dataset.paths))
    far = far_ood_images(profile, args)
    provenance = {
        "run": run.root.name, "run_commit": git_commit(), "run_profile": profile.name,
        "run_grouping": grouping, "run_split": args.split,
        "run_data_source": dataset.source.origin, "run_data_fingerprint": dataset.fingerprint,
        "run_seed": args.seed,
    }
    return Context(args, variants, profile, dataset, groups, grouping, plan, run, storage, settings, far,
                   provenance, cache_dir, progress=not args.no_progress)


def _check_config(run: RunFolder, config: dict) -> None:
    if not run.config.is_file():
        return
    old = load_toml(run.config)
    fresh = loads(dumps(config))
    if old != fresh:
        diff = sorted(k for k in set(old) | set(fresh) if old.get(k) != fresh.get(k))
        raise ConfigError(f"run folder {run.root} was made with other settings (differs in: "
                          f"{', '.join(diff)}); pass another --run-name or --out, or delete it")


def far_ood_images(profile: Profile, args) -> dict[str, np.ndarray]:
    from .evaluate.far_ood import far_ood_sets, load_folder

    n, size = profile.evaluate.far_ood_images, profile.data.image_size
    sets = far_ood_sets(n, size, seed=args.seed) if n > 0 else {}
    if args.ood_dir:
        sets["user"] = load_folder(args.ood_dir, size).images
    return sets


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        ctx = prepare(args)
        run_all(ctx)
    except SmidsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished folds are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


# --------------------------------------------------------------------------- orchestration


def run_all(ctx: Context) -> RunFolder:
    """Every variant × fold × setting not done yet (all of them with --force), then the CSVs."""
    variants = ctx.variants
    from .fold import FoldRunner

    per_fold = len(ctx.settings) + (1 if ctx.profile.evaluate.rf and not ctx.args.no_rf else 0)
    folds = selected_folds(ctx)
    todo = [(v, f) for v in variants for f in folds]
    bar = tqdm(total=len(todo) * per_fold, desc="study", unit="fit", disable=not ctx.progress,
               dynamic_ncols=True)
    rf_memo: dict = {}
    for variant in variants:
        pending = [f for v, f in todo if v is variant
                   and (ctx.args.force or not all(ctx.run.done(n, f, s)
                                                  for n, s in _arms(ctx, variant)))]
        bar.update(per_fold * (len(folds) - len(pending)))
        if not pending:
            log.info("%s: every fold already done (use --force to redo)", variant.name)
            continue
        runner = FoldRunner(ctx, variant, rf_memo)
        for fold in pending:
            bar.set_description(f"study {variant.name} fold {fold} [0-{ctx.plan.n_outer - 1}]")
            runner.run(fold, bar)
    bar.close()
    write_tables(ctx.run, Path(ctx.args.out))
    log.info("results in %s", ctx.run.root)
    return ctx.run


def selected_folds(ctx: Context) -> list[int]:
    folds = sorted(set(ctx.args.fold)) if ctx.args.fold else list(range(ctx.plan.n_outer))
    bad = [f for f in folds if not 0 <= f < ctx.plan.n_outer]
    if bad:
        raise ConfigError(f"--fold {bad}: folds are numbered 0..{ctx.plan.n_outer - 1}")
    return folds


def _arms(ctx: Context, variant: Variant) -> list[tuple[str, str]]:
    arms = [(variant.name, s) for s in ctx.settings]
    if ctx.profile.evaluate.rf and not ctx.args.no_rf:
        arms.append((variant.name + RF_SUFFIX, "tuned"))
    return arms


def write_tables(run: RunFolder, out: Path) -> None:
    """folds.csv, the run's leaderboard and comparisons, and the cross-run tables in ``out``."""
    folds = run.write_folds_csv()
    if folds.empty:
        return
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


def hyper_columns(hyper) -> dict:
    return {f"hp_{k}": v for k, v in asdict(hyper).items()}


def prediction_frame(ctx: Context, index: np.ndarray, outputs, fold: int, variant: str,
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


def save_fold(ctx: Context, row: dict, predictions: pd.DataFrame, model: dict | None) -> None:
    """Artefacts first, the fold's JSON row last: a row on disk means the fold is complete."""
    variant, fold, setting = row["variant"], row["fold"], row["setting"]
    path = ctx.run.predictions(variant, fold, setting)
    path.parent.mkdir(parents=True, exist_ok=True)
    from .io import atomic_open

    with atomic_open(path, "wb") as fh:
        predictions.to_csv(fh, index=False, compression={"method": "gzip", "mtime": 0})
    if model is not None:
        save_torch(ctx.run.model(variant, fold, setting), model)
    ctx.run.write_row(row)


def tuned_hyper(ctx: Context, variant: Variant, fold: int, fit_inner) -> dict:
    """Optuna over grouped inner folds of the outer training part; returns best params + info."""
    p = ctx.profile
    n_trials = ctx.args.trials or (p.tune.trials_unfrozen if variant.unfreeze_blocks else p.tune.trials)

    n_inner = ctx.plan.n_inner
    if variant.unfreeze_blocks and p.tune.unfrozen_inner_folds:
        n_inner = min(n_inner, p.tune.unfrozen_inner_folds)

    def objective(params: dict, report) -> float:
        scores = []
        for j in range(n_inner):
            scores.append(fit_inner(params, j))
            report(j, float(np.mean(scores)))
        return float(np.mean(scores))

    name = study_name(variant.name, fold, p.name, ctx.dataset.fingerprint,
                      grouped=ctx.args.split == "grouped")
    return tune(objective, name=name, storage=ctx.storage, n_trials=n_trials,
                space=load_search_space(p.tune.search_space), seed=ctx.args.seed + fold,
                pruner=p.tune.pruner, shared=ctx.args.storage is not None)


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)


if __name__ == "__main__":
    sys.exit(main())
