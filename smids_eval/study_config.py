"""``StudyConfig``: every option of a study, typed and validated in one place.

The CLI only parses into it; ``run_study(config)`` is the one entry point that the CLI, the
benchmark, the tests and a notebook call. Field names match the CLI's long options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import Profile, check_profile, load_profile, resolve_profile_name
from .errors import ConfigError
from .naming import SETTINGS

SPLITS = ("grouped", "random")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp32")
WEIGHTS = ("auto", "imagenet", "random")


@dataclass(frozen=True)
class StudyConfig:
    """What to run, on which data, and where to write it. ``None`` means "the profile's"."""

    variants: tuple[str, ...] = ("all",)        # names from studies/variants.toml, or "all"
    profile: str = "auto"                       # quick | full | auto | path to a .toml
    overrides: Mapping[str, Mapping] = field(default_factory=dict)  # {"train": {"epochs": 1}}
    data_dir: str | None = None                 # default: $SMIDS_DATA_DIR, else synthetic
    groups_file: str | None = None              # 'path,donor' manifest; default: shipped or inferred
    n_groups: int = 17                          # inferred acquisition groups
    drop_conflicts: bool = False                # drop same-cell units with conflicting labels
    split: str = "grouped"                      # grouped | random (measures grouping optimism)
    seed: int = 0                               # splits, sampler, initialisation
    folds: int | None = None                    # outer folds
    inner_folds: int | None = None
    repeats: int | None = None                  # repeated CV: group-to-fold re-draws
    only_folds: tuple[int, ...] = ()            # run only these outer folds (default: all)
    trials: int | None = None                   # Optuna trials per variant and fold
    storage: str | None = None                  # SQLAlchemy URL or *.journal shared by workers
    jobs: int = 0                               # worker processes on this machine (0 = auto)
    helper: bool = False                        # internal: a process started by --jobs
    settings: tuple[str, ...] = SETTINGS        # specified and/or tuned
    rf: bool = True                             # the random-forest head (if the profile has it)
    ood_dir: str | None = None                  # extra out-of-distribution images
    out: str = "results"
    run_name: str | None = None                 # default: PROFILE-DATA-FINGERPRINT-kK-seedS
    device: str | None = None
    precision: str | None = None
    weights: str | None = None
    weights_file: str | None = None
    cache_dir: str | None = None
    force: bool = False                         # redo finished folds of the selected variants
    progress: bool = True
    plan_only: bool = False                     # --plan: print counts and ETA; train, write nothing

    def __post_init__(self):
        # accept lists from notebooks and TOML, store tuples (hashable, immutable)
        for name in ("variants", "settings", "only_folds"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        self.validate()

    def replace(self, **changes) -> StudyConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Cheap checks that need no data: each names the option and what to do."""
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad or not self.settings:
            raise ConfigError(f"--settings {','.join(self.settings)!r}: use a comma list of "
                              f"{', '.join(SETTINGS)}")
        for name, value, allowed in (("split", self.split, SPLITS),
                                     ("device", self.device, DEVICES),
                                     ("precision", self.precision, PRECISIONS),
                                     ("weights", self.weights, WEIGHTS)):
            if value is not None and value not in allowed:
                raise ConfigError(f"--{name} {value!r}: use one of {', '.join(allowed)}")
        if not self.variants:
            raise ConfigError("--variant: name at least one variant, or 'all'")
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"--trials must be ≥ 1 (got {self.trials})")
        if self.jobs < 0:
            raise ConfigError(f"--jobs must be ≥ 0 (got {self.jobs}); 0 picks cores / the "
                              f"profile's cpu_threads")
        if self.n_groups < 2:
            raise ConfigError(f"--n-groups must be ≥ 2 (got {self.n_groups}): grouped folds "
                              f"need at least 2 groups (and as many as --folds); pass "
                              f"--n-groups 2 or more (default 17)")
        if any(k < 0 for k in self.only_folds):
            raise ConfigError(f"--fold {list(self.only_folds)}: folds are numbered from 0")
        if self.weights_file and not Path(self.weights_file).is_file():
            raise ConfigError(f"--weights-file {self.weights_file} does not exist")

    @property
    def grouped(self) -> bool:
        return self.split == "grouped"

    def resolve_profile(self, cuda_available: bool) -> Profile:
        """The profile with this config's overrides applied (``overrides`` first, then the
        explicit options)."""
        profile = load_profile(resolve_profile_name(self.profile, cuda_available))
        sections = {k: dict(v) for k, v in self.overrides.items()}
        unknown = sorted(set(sections) - set(profile.as_dict()))
        if unknown:
            raise ConfigError(f"overrides: unknown profile sections {unknown}")
        train, cv, model = sections.pop("train", {}), sections.pop("cv", {}), sections.pop("model", {})
        if self.precision:
            train["precision"] = self.precision
        if self.folds is not None:
            cv["outer_folds"] = self.folds
        if self.inner_folds is not None:
            cv["inner_folds"] = self.inner_folds
        if self.repeats is not None:
            cv["repeats"] = self.repeats
        if self.weights:
            model["weights"] = self.weights
        if self.weights_file:
            model["weights"] = str(Path(self.weights_file).resolve())
        try:
            profile = profile.replace(train=train, cv=cv, model=model, **sections,
                                      device=self.device or profile.device)
        except TypeError as exc:
            raise ConfigError(f"overrides: {exc}") from exc
        if profile.cv.repeats < 1:
            raise ConfigError(f"--repeats must be ≥ 1 (got {profile.cv.repeats})")
        if profile.cv.outer_folds < 2 or profile.cv.inner_folds < 2:
            raise ConfigError(f"--folds and --inner-folds must be ≥ 2 (got "
                              f"{profile.cv.outer_folds}, {profile.cv.inner_folds})")
        check_profile(profile, f"profile {self.profile}"
                      + (" with overrides" if self.overrides else ""))
        if profile.device == "cuda" and not cuda_available:
            raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
        return profile
