"""Profiles (``studies/profiles/*.toml``) and the search space, read once into typed objects."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import ConfigError
from .toml import load_toml, studies_dir


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 64            # decoded square size (px) fed to VGG19
    synthetic_images: int = 1200    # size of the embedded synthetic default set
    synthetic_style: str = "lab"    # data.synthetic.STYLES; "legacy" only replays the golden run


@dataclass(frozen=True)
class ModelConfig:
    weights: str = "auto"           # imagenet | random | auto (a file path comes from --weights-file)
    width: float = 1.0              # channel scale; tests use 1/16
    head_hidden: int = 256          # hidden units of the 3-class head
    dropout_p: float = 0.5          # dropout probability for dropout variants


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 64
    patience: int = 4               # early stopping on inner-validation macro-F1
    weight_decay: float = 0.0       # used for the "as specified" settings
    momentum: float = 0.9           # SGD momentum
    precision: str = "auto"         # auto | bf16 | fp32
    channels_last: bool = True
    feature_cache: bool = True      # train only the trainable suffix on cached activations
    views: int = 4                  # pre-drawn augmentation views per image in the cache
    class_weighting: bool = False
    compile: bool = False           # torch.compile (prefix extraction and training)
    # trainable conv blocks on maps of <= 4x4 px (block 5 at 64 px) as one matrix product
    # (models.SmallMapConv2d): 2.2x faster F.1 training on CPU, rounding-level differences
    small_map_conv: bool = True
    num_workers: int = 0
    # intra-op CPU threads of each fold × arm computation (0 = every core). oneDNN's reductions
    # depend on the thread count, so fixing it makes the numbers independent of how many worker
    # processes share the work (``--jobs``: by default cores // cpu_threads of them)
    cpu_threads: int = 0


@dataclass(frozen=True)
class CVConfig:
    outer_folds: int = 5
    inner_folds: int = 3
    repeats: int = 1                # re-drawn group-to-fold assignments (repeated grouped CV)


@dataclass(frozen=True)
class TuneConfig:
    trials: int = 6
    trials_unfrozen: int = 2        # trials for variants that train conv blocks (costly;
                                    # 0: such variants run their specified setting only)
    unfrozen_inner_folds: int = 0   # inner folds a trial of such variants uses (0 = all)
    pruner: str = "median"          # median | wilcoxon | none
    search_space: str = "search_space.toml"


@dataclass(frozen=True)
class EvalConfig:
    mc_samples: int = 30
    ood_max_images: int = 150       # held-out images per fold used for shifted copies
    ood_severities: tuple[int, ...] = (1, 2, 3)
    far_ood_images: int = 64
    rf: bool = True
    rf_trees: int = 150             # random-forest head: grid searched by grouped inner CV
    rf_max_depth: tuple[int, ...] = (0, 12)          # 0 = unlimited
    rf_min_samples_leaf: tuple[int, ...] = (1, 4)
    rf_max_features: tuple[str, ...] = ("sqrt", "log2")
    gradcam_images: int = 2         # per class, in the report
    risk_target: float = 0.05
    risk_delta: float = 0.1         # selective threshold: P(test risk > risk_target) <= delta
    conformal_alphas: tuple[float, ...] = (0.1, 0.05)
    # in-distribution rule (evaluate.ood.InDistribution): both detectors must keep an image;
    # thresholds keep these shares of the validation images (new acquisition groups)
    acquisition_detector: str = "image_stats"
    semantic_detector: str = "knn"
    acquisition_keep: float = 0.95
    semantic_keep: float = 0.975
    foreign_lab_images: int = 64    # per synthetic foreign lab (data.foreign_lab), 0 = none


    def rf_grid(self) -> dict:
        """The random-forest head's scikit-learn parameter grid."""
        return {"n_estimators": [self.rf_trees],
                "max_depth": [d or None for d in self.rf_max_depth],
                "min_samples_leaf": list(self.rf_min_samples_leaf),
                "max_features": list(self.rf_max_features)}


@dataclass(frozen=True)
class BenchmarkConfig:
    optimism_variant: str = "F.0"   # also run under a plain stratified split (grouping optimism)
    throughput: bool = True         # run the pytest-benchmark suite after the study
    # the optimism variant again with these numbers of inferred acquisition groups (sensitivity
    # of the estimate to the grouping; skipped when the groups come from a manifest)
    sensitivity_groups: tuple[int, ...] = (10, 30)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def replace(self, **sections) -> Profile:
        """Copy with some fields of some sections replaced, e.g. ``replace(train={'epochs': 2})``."""
        changes = {}
        for name, value in sections.items():
            current = getattr(self, name)
            changes[name] = (dataclasses.replace(current, **value)
                             if dataclasses.is_dataclass(current) else value)
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "cv": CVConfig,
                  "tune": TuneConfig, "evaluate": EvalConfig, "benchmark": BenchmarkConfig}


#: allowed range of every number of a profile: (low, high, low inclusive, high inclusive);
#: None = unbounded. Tuples are checked element by element. Checked when a profile is loaded
#: and again after overrides, so a bad value never reaches training as a deep TypeError.
_AT_LEAST_0, _AT_LEAST_1 = (0, None, True, True), (1, None, True, True)
_OPEN_UNIT = (0, 1, False, False)
_RANGES: dict[str, dict[str, tuple]] = {
    "data": {"image_size": (32, None, True, True), "synthetic_images": _AT_LEAST_1},
    "model": {"width": (0, None, False, True), "head_hidden": _AT_LEAST_1,
              "dropout_p": (0, 1, True, False)},
    "train": {"epochs": _AT_LEAST_1, "batch_size": _AT_LEAST_1, "patience": _AT_LEAST_1,
              "weight_decay": _AT_LEAST_0, "momentum": (0, 1, True, False),
              "views": _AT_LEAST_0, "num_workers": _AT_LEAST_0, "cpu_threads": _AT_LEAST_0},
    "cv": {"outer_folds": (2, None, True, True), "inner_folds": (2, None, True, True),
           "repeats": _AT_LEAST_1},
    "tune": {"trials": _AT_LEAST_1, "trials_unfrozen": _AT_LEAST_0,
             "unfrozen_inner_folds": _AT_LEAST_0},
    "evaluate": {"mc_samples": _AT_LEAST_0, "ood_max_images": _AT_LEAST_0,
                 "ood_severities": (1, 5, True, True), "far_ood_images": _AT_LEAST_0,
                 "rf_trees": _AT_LEAST_1, "rf_max_depth": _AT_LEAST_0,
                 "rf_min_samples_leaf": _AT_LEAST_1, "gradcam_images": _AT_LEAST_0,
                 "risk_target": _OPEN_UNIT, "risk_delta": _OPEN_UNIT,
                 "conformal_alphas": _OPEN_UNIT, "acquisition_keep": _OPEN_UNIT,
                 "semantic_keep": _OPEN_UNIT, "foreign_lab_images": _AT_LEAST_0},
    "benchmark": {"sensitivity_groups": (2, None, True, True)},
}


def _synthetic_styles() -> tuple[str, ...]:
    from .data.synthetic import STYLES  # the generator owns its styles

    return STYLES


#: allowed values of the string choices of a profile, from their owners
_CHOICES = {"data": {"synthetic_style": _synthetic_styles}}


def _describe_range(low, high, low_in: bool, high_in: bool) -> str:
    if high is None:
        return f"{'≥' if low_in else '>'} {low}"
    return f"{low} {'≤' if low_in else '<'} value {'≤' if high_in else '<'} {high}"


def check_ranges(section: str, obj, where: str) -> None:
    """Every number of one profile section within its allowed range, else a ConfigError naming
    ``where`` (file and section), the key, the value and the range."""
    for key, (low, high, low_in, high_in) in _RANGES.get(section, {}).items():
        value = getattr(obj, key)
        for v in value if isinstance(value, tuple) else (value,):
            ok = ((v >= low if low_in else v > low)
                  and (high is None or (v <= high if high_in else v < high)))
            if not ok:
                allowed = _describe_range(low, high, low_in, high_in)
                raise ConfigError(f"{where}: {key} = {value!r} is out of range (allowed: "
                                  f"{allowed}); correct it and rerun")
    for key, allowed in _CHOICES.get(section, {}).items():
        if getattr(obj, key) not in allowed():
            raise ConfigError(f"{where}: {key} = {getattr(obj, key)!r} is not one of "
                              f"{list(allowed())}; correct it and rerun")


def check_profile(profile: Profile, where: str) -> None:
    """``check_ranges`` of every section of ``profile`` (after overrides were applied)."""
    for section in _RANGES:
        check_ranges(section, getattr(profile, section), f"{where} [{section}]")


def _build_section(cls, table: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
    values = {}
    for key, value in table.items():
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ConfigError(f"{where}: {key} = {value!r} should be {type(default).__name__}")
        values[key] = value
    obj = cls(**values)
    check_ranges(next(k for k, c in _SECTION_TYPES.items() if c is cls), obj, where)
    return obj


def profile_path(name: str) -> Path:
    return studies_dir() / "profiles" / f"{name}.toml"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in (studies_dir() / "profiles").glob("*.toml"))


def load_profile(name_or_path: str) -> Profile:
    """Load a profile by name (``quick``, ``full``) or path. ``auto`` is resolved by the caller."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = profile_path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"unknown profile {name_or_path!r}; available: "
                              f"{', '.join(available_profiles())} (or auto), or a path to a .toml")
    data = dict(load_toml(path))
    name = data.pop("name", path.stem)
    description = data.pop("description", "")
    device = data.pop("device", "auto")
    sections = {}
    for key, table in data.items():
        if key not in _SECTION_TYPES or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section [{key}]; sections: {sorted(_SECTION_TYPES)}")
        sections[key] = _build_section(_SECTION_TYPES[key], table, f"{path} [{key}]")
    return Profile(name=name, description=description, device=device, **sections)


def resolve_profile_name(name: str, cuda_available: bool) -> str:
    """``auto`` picks ``full`` when CUDA is present, else ``quick``."""
    if name == "auto":
        return "full" if cuda_available else "quick"
    return name


@dataclass(frozen=True)
class SearchSpace:
    optimizers: tuple[str, ...] = ("adam", "adamw", "sgd")
    lr_low: float = 1e-6
    lr_high: float = 1e-2
    wd_low: float = 1e-6
    wd_high: float = 1e-2


def load_search_space(name_or_path: str = "search_space.toml") -> SearchSpace:
    path = Path(name_or_path)
    if not path.is_file():
        path = studies_dir() / name_or_path
    data = load_toml(path)
    try:
        space = SearchSpace(
            optimizers=tuple(data["optimizer"]["choices"]),
            lr_low=float(data["learning_rate"]["low"]), lr_high=float(data["learning_rate"]["high"]),
            wd_low=float(data["weight_decay"]["low"]), wd_high=float(data["weight_decay"]["high"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: needs [optimizer] choices, [learning_rate] and [weight_decay] "
                          f"low/high ({exc!r})") from exc
    from .variants import OPTIMIZERS

    bad = [o for o in space.optimizers if o not in OPTIMIZERS]
    if bad or not (0 < space.lr_low < space.lr_high) or not (0 < space.wd_low < space.wd_high):
        raise ConfigError(f"{path}: optimizers must be among {OPTIMIZERS} and 0 < low < high")
    return space


def profile_from_dict(data: dict) -> Profile:
    """Rebuild a Profile from ``Profile.as_dict()`` (as saved with each fold's model)."""
    data = dict(data)
    sections = {key: _build_section(cls, dict(data.pop(key, {})), f"saved profile [{key}]")
                for key, cls in _SECTION_TYPES.items()}
    return Profile(name=data.get("name", "saved"), description=data.get("description", ""),
                   device=data.get("device", "auto"), **sections)
