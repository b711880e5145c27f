"""Where the package runs from: a source checkout (editable install, tox) or an installed wheel."""

from __future__ import annotations

from pathlib import Path

#: The folder above the package: the repository root in a checkout, site-packages in a wheel install.
_ABOVE = Path(__file__).resolve().parent.parent


def source_root() -> Path | None:
    """The repository root when the package runs from its checkout, else None.

    Installed from a wheel, the folder above the package is site-packages (or a ``--target``
    folder), whose ``studies/`` or ``benchmark/`` would belong to some other distribution: only a
    folder holding ``pyproject.toml`` and ``studies/variants.toml`` counts as the checkout.
    """
    if (_ABOVE / "pyproject.toml").is_file() and (_ABOVE / "studies" / "variants.toml").is_file():
        return _ABOVE
    return None
