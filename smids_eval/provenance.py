"""Provenance recorded in every result row: commit, profile, device, weights, grouping, data, seed."""

from __future__ import annotations

import subprocess

from . import __version__
from .layout import source_root


def git_commit() -> str:
    """Short commit of the code that ran, ``-dirty`` when it had uncommitted changes.

    Installed from a wheel there is no checkout to ask (and git would answer for whatever
    repository happens to hold site-packages): the release, ``smids-eval==VERSION``, is recorded.
    """
    repo = source_root()
    if repo is None:
        return f"smids-eval=={__version__}"
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no",
                                "--", "smids_eval", "studies"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
