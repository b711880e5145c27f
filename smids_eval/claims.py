"""Each piece of work computed once, however many workers share a run folder.

A worker claims a fold × arm by creating ``RUN/claims/<key>.claim`` with ``O_CREAT | O_EXCL`` (atomic
on local file systems and on NFS v3+) before computing it; a worker that finds the claim moves
on. While it computes, a heartbeat thread refreshes the file's modification time; the claim is
removed once the result is saved. A claim is stale, and is taken over, when its worker is a dead
process on this host, or when its heartbeat is older than ``stale_after`` seconds (a worker on
another machine that died): the taker replaces the file atomically and keeps the claim only if
its own token is the one that stays.

Workers also register under ``RUN/claims/workers/``, so that ``--jobs`` starts only as many helper
processes as the machine's cores leave room for (``live_here``)."""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

HEARTBEAT_S = 20.0
STALE_AFTER_S = 180.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class Claims:
    """Claims of one run folder by this worker (``host:pid:token``)."""

    def __init__(self, run_root: Path, stale_after: float = STALE_AFTER_S,
                 heartbeat: float = HEARTBEAT_S):
        self.folder = Path(run_root) / "claims"
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.token = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"

    # ------------------------------------------------------------------ workers on this host
    def _worker_file(self, host: str, pid: int) -> Path:
        return self.folder / "workers" / f"{host}.{pid}.worker"

    def join(self, pid: int | None = None) -> None:
        """Register this worker (until ``leave`` or process exit), or a process it started."""
        path = self._worker_file(self.host, pid or self.pid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        if pid is None:
            atexit.register(self.leave)

    def leave(self) -> None:
        """Unregister this worker and remove the folder once no worker is registered."""
        path = self._worker_file(self.host, self.pid)
        path.unlink(missing_ok=True)
        folder = path.parent
        try:
            folder.rmdir()
        except OSError:  # other workers remain, or already gone
            pass

    def live_here(self) -> int:
        """How many registered workers of this run folder are alive on this host (≥ 1); the
        files of dead ones are removed on the way."""
        live = 1
        for path in (self.folder / "workers").glob(f"{self.host}.*.worker"):
            pid = int(path.name[:-len(".worker")].rsplit(".", 1)[1])
            if pid == self.pid:
                continue
            if _alive(pid):
                live += 1
            else:
                path.unlink(missing_ok=True)
        return live

    # ------------------------------------------------------------------ claims
    def path(self, key: str) -> Path:
        return self.folder / f"{key}.claim"

    def _record(self) -> bytes:
        return json.dumps({"worker": self.token, "host": self.host, "pid": self.pid}).encode()

    def owner(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key).read_bytes())
        except (OSError, ValueError):
            return None

    def stale(self, key: str) -> bool:
        """Whether the existing claim on ``key`` belongs to a dead worker."""
        path = self.path(key)
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        info = self.owner(key)
        if info is not None and info.get("host") == self.host and info.get("pid") != self.pid:
            return not _alive(int(info.get("pid", -1)))
        return age > self.stale_after

    def acquire(self, key: str) -> bool:
        """Claim ``key``: True when this worker now holds it."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not self.stale(key):
                return False
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(self._record())
            os.replace(tmp, path)
            time.sleep(0.05)  # a worker taking over at the same moment: the last replace wins
            won = (self.owner(key) or {}).get("worker") == self.token
            if won:
                log.info("took over the stale claim on %s", key)
            return won
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._record())
        return True

    def release(self, key: str) -> None:
        if (self.owner(key) or {}).get("worker") == self.token:
            self.path(key).unlink(missing_ok=True)

    @contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """``with claims.claim(key) as ours:`` compute only when ``ours``; the claim's heartbeat
        runs meanwhile and the claim is released at the end (also on an error)."""
        if not self.acquire(key):
            yield False
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                try:
                    os.utime(self.path(key))
                except OSError:
                    return

        thread = threading.Thread(target=beat, daemon=True, name=f"claim {key}")
        thread.start()
        try:
            yield True
        finally:
            stop.set()
            thread.join()
            self.release(key)
