"""Read TOML files (the configs in ``studies/``) with errors that name the file."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

from .errors import ConfigError
from .layout import source_root

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def studies_dir() -> Path:
    """The declarative configs (``variants.toml``, ``search_space.toml``, ``profiles/*.toml``).

    ``SMIDS_STUDIES_DIR`` when set; else the repository's ``studies/`` (a source checkout or an
    editable install: edits there take effect at once); else the copy shipped in the wheel as the
    data package ``smids_eval.studies`` (pyproject maps that package onto ``studies/``).
    """
    override = os.environ.get("SMIDS_STUDIES_DIR")
    if override:
        return Path(override)
    root = source_root()
    if root is not None:
        return root / "studies"
    installed = _installed_studies()
    if installed is None:
        raise ConfigError("cannot find the study configs (studies/): this smids_eval is neither a "
                          "source checkout nor a complete install; set SMIDS_STUDIES_DIR to a "
                          "folder holding variants.toml, search_space.toml and profiles/")
    return installed


def _installed_studies() -> Path | None:
    try:
        folder = resources.files("smids_eval.studies")
    except ModuleNotFoundError:
        return None
    # Wheels install as plain files. The data package has no __init__.py, so files() gives a
    # namespace MultiplexedPath rather than a Path; a file joined onto either is a pathlib.Path.
    anchor = folder / "variants.toml"
    if isinstance(anchor, Path) and anchor.is_file():
        return anchor.parent
    return None


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
