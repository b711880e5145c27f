"""Issue 14's scale-out target: two workers on one machine are not slower in total than one.

    python benchmark/two_workers.py [--profile quick] [--variant A.0 ...] [-- extra study args]

Runs the same study three times on the synthetic default, each in a fresh output folder with a
pre-warmed data/feature cache (so none pays for decoding): one single-process worker
(``--jobs 1``), one worker as the README starts it (``--jobs`` auto: helper processes up to
cores / the profile's ``cpu_threads``), and two such workers started together on the same
``--out`` (they split the folds through claims; helpers stand down when the machine is full).
Prints the wall times, the ratio two / one (the target is ≤ 1.0) and one / single, and checks
that both multi-process runs equal the single process (``reproduction.compare_runs``).
Measured as a ratio within one invocation: other jobs on the host affect both alike.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smids_eval.reproduction import compare_runs


def study_cmd(out: Path, cache: Path, profile: str, variants: list[str], extra: list[str]):
    cmd = [sys.executable, "-m", "smids_eval.study", "--profile", profile, "--out", str(out),
           "--cache-dir", str(cache), "--no-progress", "--no-report", "--quiet"]
    for v in variants:
        cmd += ["--variant", v]
    return cmd + extra


def timed(cmds: list[list[str]]) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env={**os.environ, "PYTHONUNBUFFERED": "1"}) for c in cmds]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a worker failed")
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="quick")
    p.add_argument("--variant", action="append", default=None)
    p.add_argument("extra", nargs="*", help="more study options (after --)")
    args = p.parse_args()
    variants = args.variant or ["A.0", "B.0"]
    extra = args.extra or ["--settings", "specified", "--no-rf"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        timed([study_cmd(tmp / "warm", cache, args.profile, variants, extra)])  # every cache
        single = timed([study_cmd(tmp / "single", cache, args.profile, variants,
                                  extra + ["--jobs", "1"])])
        one = timed([study_cmd(tmp / "one", cache, args.profile, variants, extra)])
        two = timed([study_cmd(tmp / "two", cache, args.profile, variants, extra)] * 2)
        (run_one,) = [d for d in (tmp / "one").iterdir() if d.is_dir()]
        records = {name: compare_runs(tmp / name / run_one.name, tmp / "single" / run_one.name)
                   for name in ("one", "two")}
    print(f"one single-process worker (--jobs 1) {single:.0f} s; one worker (--jobs auto: "
          f"helpers up to cores / cpu_threads) {one:.0f} s; two workers {two:.0f} s: ratio "
          f"two / one {two / one:.2f} (target <= 1.00), one / single {one / single:.2f}")
    for name, record in records.items():
        print(f"{name} equals the single process: {record['within_tolerance']} "
              f"({record['rows_compared']} fold rows, classification max |delta| "
              f"{record['max_abs_delta'].get('cls', float('nan')):.2g}, all columns max |delta| "
              f"{max(record['max_abs_delta'].values(), default=float('nan')):.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
