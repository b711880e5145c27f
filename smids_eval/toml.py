"""Read TOML files from ``studies/`` with errors that name the file."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The repository's declarative configs. Overridable with SMIDS_STUDIES_DIR.
STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"


def studies_dir() -> Path:
    import os

    return Path(os.environ.get("SMIDS_STUDIES_DIR", STUDIES_DIR))


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the file and rerun") from exc


def loads(text: str) -> dict:
    """Parse TOML text (used to compare a run's settings with its saved config.toml)."""
    return tomllib.loads(text)
