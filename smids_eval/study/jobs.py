"""``--jobs``: helper processes that share one study's work on this machine.

Each helper runs the same study (``StudyConfig.helper``) in a fresh interpreter, from the
context the parent prepared (data, same-cell units, groups and splits are not worked out
again; only the Optuna storage is opened anew); claims
(``claims.py``) split the fold × arm work between all processes, and every computation runs with
the profile's ``cpu_threads``, so the numbers do not depend on how many processes took part. A
helper stops when more workers than ``jobs`` run for the run folder on this machine (someone
started another worker by hand) and never writes the tables: the process that started it waits
for it and then finishes whatever is left."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import time
from collections.abc import Callable

from filelock import FileLock

from ..claims import Claims

log = logging.getLogger("smids_eval.study")


def _helper_main(resume: Callable, ctx, run_root: str, level: int) -> None:
    """Entry point of a helper process (spawned: a fresh interpreter, no inherited torch
    threads or open database connections). It stands down at once when, meanwhile, another
    worker of the run started on this machine and the cores are taken."""
    logging.basicConfig(level=level, format="%(asctime)s helper %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("smids_eval.weights").setLevel(logging.ERROR)  # the parent said it
    if Claims(run_root).live_here() > ctx.config.jobs:
        return
    resume(ctx)


def start_helpers(resume: Callable, ctx, claims: Claims, jobs: int) -> list:
    """Start enough helpers that ``jobs`` workers of this run folder run on this machine
    (counting, under a lock, the workers already registered, this one included); each calls
    ``resume`` (the study's entry point for a prepared context, passed in: this module is below
    it) on a copy of ``ctx`` (a ``StudyContext`` without its storage) whose config says
    ``helper``."""
    claims.folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(claims.folder / "workers.lock")):
        missing = jobs - claims.live_here()
        if missing <= 0:
            return []
        context = multiprocessing.get_context("spawn")
        helper_ctx = dataclasses.replace(ctx, storage=None, config=ctx.config.replace(
            helper=True, jobs=jobs, progress=False, run_name=ctx.run.root.name))
        level = max(logging.WARNING, logging.getLogger("smids_eval").getEffectiveLevel())
        procs = []
        for _ in range(missing):
            proc = context.Process(target=_helper_main,
                                   args=(resume, helper_ctx, str(claims.folder.parent), level),
                                   name="smids-eval helper")
            proc.start()
            claims.join(proc.pid)
            procs.append(proc)
    log.info("--jobs %d: %d helper process(es) share this study's work (pids %s)", jobs,
             len(procs), ", ".join(str(p.pid) for p in procs))
    return procs


def wait_helpers(procs: list, on_poll: Callable[[], None] | None = None,
                 every: float = 2.0) -> int:
    """Wait for the helpers (calling ``on_poll`` meanwhile); returns how many failed."""
    while any(p.is_alive() for p in procs):
        if on_poll is not None:
            on_poll()
        time.sleep(every)
    failed = [p for p in procs if p.exitcode != 0]
    for p in failed:
        log.warning("helper pid %d ended with exit code %s; its unfinished work is done here",
                    p.pid, p.exitcode)
    return len(failed)
