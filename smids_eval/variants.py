"""Typed, validated view of ``studies/variants.toml`` (the study's eleven variants)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError
from .toml import load_toml, studies_dir

CHANNELS = ("grey", "rgb")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class Variant:
    """One row of the study's plan: architecture plus specified training parameters."""

    name: str
    channels: str
    augmentation: bool
    dropout: bool
    unfreeze_blocks: int
    optimizer: str
    learning_rate: float

    @property
    def in_channels(self) -> int:
        return 1 if self.channels == "grey" else 3

    def as_dict(self) -> dict:
        return asdict(self)


_FIELDS = {
    "channels": str,
    "augmentation": bool,
    "dropout": bool,
    "unfreeze_blocks": int,
    "optimizer": str,
    "learning_rate": float,
}


def _parse(name: str, table: dict, path: Path) -> Variant:
    where = f"{path} [variants.\"{name}\"]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - set(_FIELDS))
    missing = sorted(set(_FIELDS) - set(table))
    if unknown or missing:
        raise ConfigError(f"{where}: missing keys {missing}, unknown keys {unknown}; "
                          f"a variant needs exactly {sorted(_FIELDS)}")
    values = {}
    for key, typ in _FIELDS.items():
        value = table[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if typ is int and isinstance(value, bool) or not isinstance(value, typ):
            raise ConfigError(f"{where}: {key} = {value!r} must be of type {typ.__name__}")
        values[key] = value
    if values["channels"] not in CHANNELS:
        raise ConfigError(f"{where}: channels = {values['channels']!r}; use one of {CHANNELS}")
    if values["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"{where}: optimizer = {values['optimizer']!r}; use one of {OPTIMIZERS}")
    if not 0 <= values["unfreeze_blocks"] <= 5:
        raise ConfigError(f"{where}: unfreeze_blocks must be 0..5 (VGG19 has 5 blocks)")
    if not 0 < values["learning_rate"] < 1:
        raise ConfigError(f"{where}: learning_rate must be in (0, 1)")
    return Variant(name=name, **values)


def load_variants(path: str | Path | None = None) -> dict[str, Variant]:
    """All variants in file order, keyed by name."""
    path = Path(path) if path else studies_dir() / "variants.toml"
    data = load_toml(path)
    tables = data.get("variants")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path} has no [variants.\"NAME\"] tables")
    return {name: _parse(name, table, path) for name, table in tables.items()}


def get_variant(name: str, path: str | Path | None = None) -> Variant:
    variants = load_variants(path)
    if name not in variants:
        raise ConfigError(f"unknown variant {name!r}; valid variants: {', '.join(variants)}")
    return variants[name]


def select_variants(names: list[str], path: str | Path | None = None) -> list[Variant]:
    """Resolve CLI names (``all`` = every variant); unknown names list the valid ones."""
    variants = load_variants(path)
    if not names or "all" in names:
        return list(variants.values())
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; "
                          f"valid variants: {', '.join(variants)} (or 'all')")
    return [variants[n] for n in dict.fromkeys(names)]
