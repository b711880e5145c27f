"""What a run cost: wall seconds per stage, peak memory, and the machine's bf16 peak.

A run writes this as ``timings.json`` (``RunCost.record``) so its cost can be compared with the
plan's ETA and, through the normalised cost, across machines. Nothing here touches results:
``folds.csv.gz`` keeps only its per-fold ``wall_seconds``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .faults import fault_point

#: the speed target: a study costs at most TARGET_S seconds on a host with at least this bf16
#: matmul peak; on a slower host its normalised cost ``wall_s * peak_gflops / REFERENCE_GFLOPS``
#: must stay within it (a faster host owes plain wall time: ``normalised_wall``)
REFERENCE_GFLOPS = 700.0
TARGET_S = 1800.0

#: the stages a benchmark times after its main study, in the main study's timer
RANDOM_SPLIT, SENSITIVITY, THROUGHPUT, REPORT = "random_split", "sensitivity", "throughput", "report"
LATER_STAGES = (RANDOM_SPLIT, SENSITIVITY, THROUGHPUT, REPORT)


class StageTimer:
    """Wall seconds per named stage, and the wall time since the timer was made.

    Stages may nest: time spent in an inner stage is not also charged to the outer one, so the
    stage times are exclusive and their sum never exceeds the wall time.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._start = clock()
        self._seconds: dict[str, float] = {}
        self._open: list[list] = []     # [name, charged up to] of each running stage, innermost last

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        fault_point(name)
        now = self._clock()
        if self._open:
            self._charge(self._open[-1], now)   # pause the outer stage
        entry = [name, now]
        self._open.append(entry)
        try:
            yield
        finally:
            now = self._clock()
            self._charge(entry, now)
            self._open.pop()
            if self._open:
                self._open[-1][1] = now          # resume the outer stage

    def _charge(self, entry: list, now: float) -> None:
        name, since = entry
        self._seconds[name] = self._seconds.get(name, 0.0) + max(0.0, now - since)
        entry[1] = now

    def wall(self) -> float:
        return self._clock() - self._start

    def as_dict(self) -> dict[str, float]:
        """Seconds per stage in first-use order, rounded down to ms (so they never add up to
        more than ``wall`` rounded up)."""
        return {name: math.floor(s * 1000) / 1000 for name, s in self._seconds.items()}


def peak_rss_mb() -> dict[str, float | None]:
    """Peak resident memory of this process and of its largest finished child, in MB (None
    where ``resource`` is unavailable). ``ru_maxrss`` is KB on Linux, bytes on macOS."""
    try:
        import resource
    except ImportError:  # Windows
        return {"self": None, "children": None}
    scale = 1 / 1024 ** 2 if sys.platform == "darwin" else 1 / 1024
    return {"self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
            "children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1)}


def normalised_wall(wall_s: float, peak_gflops: float | None) -> float | None:
    """Wall seconds scaled to a REFERENCE_GFLOPS host: ``wall × peak / reference`` on a slower
    host, plain wall on a host at least that fast (it is held to the same TARGET_S, not to
    what it could do at its own peak); None when no peak was measured."""
    if peak_gflops is None:
        return None
    return round(wall_s * min(peak_gflops, REFERENCE_GFLOPS) / REFERENCE_GFLOPS, 1)


@dataclass
class RunCost:
    """One invocation's cost: its stage timer, the bf16 matmul peak measured at its start, and
    the plan it started from (``StudyPlan.as_dict()``, which holds the ETA)."""

    timer: StageTimer = field(default_factory=StageTimer)
    peak_gflops: float | None = None
    device: str | None = None
    plan: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The ``timings.json`` content at this moment."""
        wall = math.ceil(self.timer.wall() * 1000) / 1000
        rss = peak_rss_mb()
        peak = self.peak_gflops
        return {
            "wall_s": wall,
            "stages_s": self.timer.as_dict(),
            "peak_rss_mb": rss["self"],
            "peak_rss_children_mb": rss["children"],
            "device": self.device,
            "bf16_peak_gflops": None if peak is None else round(peak, 1),
            "normalised_wall_s": normalised_wall(wall, peak),
            "normalised_reference_gflops": REFERENCE_GFLOPS,
            "normalised_target_s": TARGET_S,
            "eta_s": self.plan.get("eta_s"),
            "plan": self.plan,
        }


def benchmark_record(record: dict, main_study: dict | None,
                     end_peak_gflops: float | None = None) -> dict:
    """A benchmark's ``timings.json``: ``record`` (``RunCost.record``) covers the whole job, since
    the benchmark's timer is the main study's, kept running through the stages after it; it is
    marked ``"scope": "benchmark"`` and carries under ``main_study`` the main study's own wall,
    normalised cost and stages (from ``main_study``, the record the study wrote at its end; left
    out when it wrote none), and ``bf16_peak_end_gflops``, the peak measured again at the end.
    A study's own ``timings.json`` has none of these keys."""
    out = dict(record, scope="benchmark")
    if end_peak_gflops is not None:   # a shared host drifts: the start's peak alone can mislead
        out["bf16_peak_end_gflops"] = round(end_peak_gflops, 1)
    if main_study:
        out["main_study"] = {key: main_study.get(key)
                             for key in ("wall_s", "normalised_wall_s", "stages_s")}
    return out
