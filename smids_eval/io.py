"""Atomic file writes (temp file in the same folder + os.replace), so an interrupt never
leaves a half-written CSV, model or cache file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temp file next to ``path``; on clean exit fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON atomically (numpy scalars as floats)."""
    import json

    write_text(path, json.dumps(obj, indent=1, default=float))


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV atomically (no index)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)


def save_torch(path: str | os.PathLike, obj) -> None:
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def save_numpy(path: str | os.PathLike, **arrays) -> None:
    """Save arrays to an ``.npz`` atomically (uncompressed: fast to load, memory-mappable)."""
    import numpy as np

    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_torch(path: str | os.PathLike, *, weights_only: bool, what: str, remedy: str):
    """``torch.load`` on the CPU; an unreadable file is a ConfigError naming it and the remedy."""
    import torch

    from .errors import ConfigError

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise ConfigError(f"{what} {path} is not a readable torch checkpoint "
                          f"({type(exc).__name__}: {str(exc)[:200]}); {remedy}") from exc
