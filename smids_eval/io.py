"""Atomic file writes (temp file in the same folder + os.replace), so an interrupt never
leaves a half-written CSV, model or cache file behind."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import ConfigError, OutputError

#: errno → why a write failed, in words: the faults of the place written to, not of the program
WRITE_FAULTS = {
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file",
    errno.EEXIST: "a part of the path is a file",
}
#: faults a write can hit after its temp file was created (the others are about opening)
_WHILE_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def output_error(path: str | os.PathLike | None, exc: OSError) -> OutputError:
    """An ``OutputError`` naming the file and the fault, and saying that finished work is kept."""
    where = path if path is not None else (exc.filename or "a result file")
    reason = WRITE_FAULTS.get(exc.errno, exc.strerror or str(exc))
    return OutputError(
        f"cannot write {where}: {reason} (errno {exc.errno}); finished folds, models and caches "
        f"are kept (every file is written atomically): free space or pass a writable --out / "
        f"--cache-dir, then rerun the same command to resume")


def ensure_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the folder ``path`` if missing and prove it writable (a temp file is created and
    removed), before any work; else a ConfigError naming ``what`` and the folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder; pass a folder (it is created "
                          f"when missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = WRITE_FAULTS.get(exc.errno, exc.strerror or str(exc))
        raise ConfigError(f"{what} {path} is not a writable folder ({reason}); pass a folder "
                          f"you can write to") from exc
    return path


def _file_mode() -> int:
    """What ``open`` would give a new file: 0666 less the umask (read once, at import)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temp file next to ``path``; on clean exit fsync it and rename it over ``path``.
    A full disk, a read-only file system or a missing permission is an ``OutputError`` naming
    ``path``; the previous version of ``path`` (if any) stays as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in WRITE_FAULTS:
            raise output_error(path, exc) from exc
        raise
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; results are for others to read too
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _WHILE_WRITING:
            raise output_error(path, exc) from exc
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON atomically (numpy scalars as floats)."""
    import json

    write_text(path, json.dumps(obj, indent=1, default=float))


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV atomically (no index); a ``.gz`` path is gzipped with a
    zero timestamp, so the same table always gives the same bytes."""
    if not str(path).endswith(".gz"):
        with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
            frame.to_csv(fh, index=False)
        return
    import gzip
    import io

    with atomic_open(path, "wb") as fh:
        with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz, \
                io.TextIOWrapper(gz, encoding="utf-8", newline="") as text:
            frame.to_csv(text, index=False)


def save_torch(path: str | os.PathLike, obj) -> None:
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def save_numpy(path: str | os.PathLike, **arrays) -> None:
    """Save arrays to an ``.npz`` atomically (uncompressed: fast to load, memory-mappable)."""
    import numpy as np

    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_numpy(path: str | os.PathLike) -> dict | None:
    """The arrays of a ``save_numpy`` file, or None when absent or unreadable (a cache entry
    that its owner then rebuilds)."""
    import numpy as np

    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError):
        return None


def load_torch(path: str | os.PathLike, *, weights_only: bool, what: str, remedy: str):
    """``torch.load`` on the CPU; an unreadable file is a ConfigError naming it and the remedy."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise ConfigError(f"{what} {path} is not a readable torch checkpoint "
                          f"({type(exc).__name__}: {str(exc)[:200]}); {remedy}") from exc
