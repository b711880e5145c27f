"""Fault injection for the resume tests: ``SMIDS_FAULT_KILL_AT=<stage>:<n>`` makes the process
kill itself (SIGKILL, as ``kill -9``) when it enters stage ``<stage>`` (``StageTimer`` stage
names: tuning, final_fits, evaluation, saving, …) for the n-th time. Unset, it does nothing."""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "SMIDS_FAULT_KILL_AT"
_entered: Counter[str] = Counter()


def fault_point(stage: str) -> None:
    target = os.environ.get(ENV)
    if not target:
        return
    _entered[stage] += 1
    if target == f"{stage}:{_entered[stage]}":
        os.kill(os.getpid(), signal.SIGKILL)
