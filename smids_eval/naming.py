"""Names of arms (variant × setting, neural or random-forest head) and their on-disk spelling.

One owner for these spellings: the run folder, predict, the report and the comparisons all
derive names from here, so a result file and the table row that reads it never disagree.
"""

from __future__ import annotations

#: training settings of a neural arm: the study's table, or Optuna's choice on inner folds
SETTINGS = ("specified", "tuned")
#: suffix of the random-forest head fitted on a variant's frozen features ("F.0+RF")
RF_SUFFIX = "+RF"
#: the setting a random-forest head is recorded under (its grid is tuned by grouped inner CV)
RF_SETTING = "tuned"


def rf_name(variant: str) -> str:
    """``F.0`` → ``F.0+RF``."""
    return variant + RF_SUFFIX


def is_rf(name: str) -> bool:
    return str(name).endswith(RF_SUFFIX)


def arm_label(variant: str, setting: str) -> str:
    """One (variant, setting) label, as spelled in comparisons.csv and the report."""
    return f"{variant} [{setting}]"


def dir_name(name: str) -> str:
    """Variant or arm name → a file-system-safe directory name (``F.0+RF`` → ``F.0_plus_RF``)."""
    return name.replace("/", "_").replace("+", "_plus_")


def from_dir_name(directory: str) -> str:
    """Inverse of ``dir_name`` for the names the study writes."""
    return directory.replace("_plus_", "+")
