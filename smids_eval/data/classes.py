"""Canonical class names and the folder-name spellings accepted for them."""

from __future__ import annotations

import re

from .. import CLASSES

_ALIASES = {
    "normalsperm": "Normal_Sperm",
    "normal": "Normal_Sperm",
    "abnormalsperm": "Abnormal_Sperm",
    "abnormal": "Abnormal_Sperm",
    "nonsperm": "Non-Sperm",
    "non": "Non-Sperm",
    "notsperm": "Non-Sperm",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def canonical_class(folder_name: str) -> str | None:
    """Map a folder name (``normal``, ``Non_Sperm``, ``non sperm`` …) to a canonical class, or None."""
    return _ALIASES.get(_key(folder_name))


def class_index(name: str) -> int:
    return CLASSES.index(name)


def class_slug(name: str) -> str:
    """Column-safe slug: ``Non-Sperm`` → ``non_sperm`` (result keys and CSV column names)."""
    return name.lower().replace("-", "_")


#: slugs of ``CLASSES``, in class order: the one list every column name is built from
SLUGS = tuple(class_slug(c) for c in CLASSES)
