"""Optuna search of optimizer, learning rate and weight decay: storage, sampler, pruner, objective.

Several worker processes (on several machines) can share one study through any SQLAlchemy URL
(PostgreSQL, MySQL) or a JournalStorage file: each trial is run by exactly one worker, and the
study stops at the profile's trial budget however many workers there are.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from .config import SearchSpace, TuneConfig
from .errors import ConfigError, TrainingDiverged
from .groups import groups_digest

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

#: reports one intermediate value (step, value); raises optuna.TrialPruned when the pruner says so
Report = Callable[[int, float], None]


def open_storage(storage: str | None, out_dir: Path):
    """``None`` → SQLite file in the run folder; ``*.journal`` / ``journal:PATH`` → JournalStorage
    file (NFS-friendly, no server); anything else → an SQLAlchemy URL checked now, before any work."""
    if storage is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(out_dir / 'optuna.db').resolve()}"
    if storage.startswith("journal:") or storage.endswith(".journal"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise ConfigError(f"cannot open the journal storage {path}: {exc}") from exc
    if "://" not in storage:
        raise ConfigError(f"--storage {storage!r} is neither an SQLAlchemy URL "
                          "(e.g. postgresql://user:pw@host/db) nor a journal file (*.journal)")
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(8):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" but long-standing
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True},
                                                  heartbeat_interval=60, grace_period=180)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            # workers starting together on a fresh database race to create Optuna's tables
            # (SQLite: "table … already exists" or "database is locked")
            racing = not isinstance(exc, OperationalError) or any(
                s in str(exc) for s in ("already exists", "database is locked"))
            if not racing:
                raise ConfigError(f"storage {storage!r} is unreachable or unusable: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
            if attempt == 7:
                raise
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # SQLAlchemy raises many types: report them all the same way
            raise ConfigError(f"storage {storage!r} is unreachable or unusable: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    raise AssertionError("unreachable")


def study_name(variant: str, fold: int, profile: str, fingerprint: str, grouped: bool = True,
               seed: int = 0, repeat: int = 0, groups=None) -> str:
    """Optuna study of one variant's tuning in one outer fold. Everything that changes the
    fold's training part is in the name (data, grouping, split, seed, repeat), so workers that
    share a storage never reuse trials tuned on another split."""
    split = "" if grouped else "-random-split"
    hashed = "" if groups is None else "-g" + groups_digest(groups)
    return (f"smids-{variant}-r{repeat}-fold{fold}-{profile}-{fingerprint}{hashed}-seed{seed}"
            f"{split}")


def trial_budget(cfg: TuneConfig, trials: int | None, unfrozen: bool, n_inner: int
                 ) -> tuple[int, int]:
    """(trials, inner folds per trial) of one variant's tuning in one outer fold: ``--trials``
    overrides the profile; variants that train conv blocks (``unfrozen``) are costly, so they
    get ``trials_unfrozen`` and at most ``unfrozen_inner_folds`` inner folds (0 = all).
    0 trials: the variant is not tuned (``is_tuned``)."""
    n_trials = trials or (cfg.trials_unfrozen if unfrozen else cfg.trials)
    if unfrozen and cfg.unfrozen_inner_folds:
        n_inner = min(n_inner, cfg.unfrozen_inner_folds)
    return n_trials, n_inner


def is_tuned(cfg: TuneConfig, trials: int | None, unfrozen: bool) -> bool:
    """Whether a variant has a ``tuned`` arm: a profile that cannot afford to tune the costly
    variants sets ``trials_unfrozen = 0`` (they run their specified setting only) unless
    ``--trials`` asks for trials."""
    return trial_budget(cfg, trials, unfrozen, 1)[0] > 0


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {name!r}; use median, wilcoxon or none")


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict:
    return {
        "optimizer": trial.suggest_categorical("optimizer", list(space.optimizers)),
        "learning_rate": trial.suggest_float("learning_rate", space.lr_low, space.lr_high, log=True),
        "weight_decay": trial.suggest_float("weight_decay", space.wd_low, space.wd_high, log=True),
    }


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials left RUNNING by a killed worker as FAIL (only safe when this worker owns the
    study): they are not finished, so they neither count against the budget nor guide TPE."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        log.info("%s: trial %d was left running by a stopped worker: marked failed",
                 study.study_name, t.number)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)


def replay(study: optuna.Study, sampler: optuna.samplers.BaseSampler, space: SearchSpace) -> None:
    """Advance a freshly seeded ``sampler`` to where an uninterrupted run would have it: ask it
    for the study's finished trials again, in order, on an in-memory copy told the stored
    outcomes. A resumed study then suggests exactly what the uninterrupted one did (same seed,
    same numbers, issue 14). Stops, with a warning, at the first suggestion that differs (a
    study tuned with other settings or by several workers)."""
    done = sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number)
    if not done:
        return
    shadow = optuna.create_study(direction="maximize", sampler=sampler)
    try:
        for t in done:
            trial = shadow.ask()
            params = suggest(trial, space)
            if params != t.params:
                log.warning("%s: trial %d does not replay (its study was tuned differently); "
                            "the resumed search continues from another sampler state",
                            study.study_name, t.number)
                return
            for step, value in sorted(t.intermediate_values.items()):
                trial.report(value, step)
            shadow.tell(trial, t.value if t.state == TrialState.COMPLETE else None,
                        state=t.state)
    finally:
        _forget_study(sampler)


def _forget_study(sampler: optuna.samplers.BaseSampler) -> None:
    """TPE caches the search space of the first study it samples for and refuses any other;
    after the replay on the in-memory copy, give it a fresh cache for the real study (the
    space is the same, so nothing else changes)."""
    from optuna.search_space import IntersectionSearchSpace

    if isinstance(getattr(sampler, "_search_space", None), IntersectionSearchSpace):
        sampler._search_space = IntersectionSearchSpace(include_pruned=True)


def tune(objective: Callable[[dict, Report], float], *, name: str, storage, n_trials: int,
         space: SearchSpace, seed: int, pruner: str = "median", progress: bool = False,
         shared: bool = False) -> dict:
    """Run (or resume, or join) the study ``name`` until it has ``n_trials`` finished trials.

    ``objective(params, report)`` returns mean inner-validation macro-F1; it may call
    ``report(step, value)``. A diverged run (NaN/inf loss) becomes a pruned trial.
    Returns the best trial's params plus ``best_value`` and ``n_trials``.
    A single worker is fully deterministic from ``seed``; with ``shared`` storage (several
    workers) each worker mixes its process id into the sampler seed, so workers explore
    different points instead of repeating each other's suggestions.
    """
    sampler_seed = (seed * 1_000_003 + os.getpid()) % 2**31 if shared else seed
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=min(4, n_trials))
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=sampler, pruner=make_pruner(pruner))
    if not shared:  # this worker owns the study (it holds the fold's claim, claims.py)
        fail_stale_trials(study)
        replay(study, sampler, space)

    def run_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        params = suggest(trial, space)

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} (value {value:.4f})")

        log.info("%s: trial %d of %d: %s, lr %.2e, wd %.2e", name,
                 min(finished_trials(study) + 1, n_trials), n_trials,
                 params["optimizer"], params["learning_rate"], params["weight_decay"])
        try:
            return objective(params, report)
        except TrainingDiverged as exc:
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(f"diverged: {exc}") from exc

    remaining = n_trials - finished_trials(study)
    if remaining > 0:
        study.optimize(run_trial, n_trials=remaining, show_progress_bar=progress,
                       callbacks=[MaxTrialsCallback(n_trials, states=FINISHED)],
                       catch=())
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TrainingDiverged(f"every trial of {name} was pruned or diverged; "
                               "widen the search space or check the data")
    best = max(complete, key=lambda t: t.value)
    return {**best.params, "best_value": float(best.value), "n_trials": finished_trials(study)}
