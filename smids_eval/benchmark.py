"""``run_benchmark(StudyConfig)`` (what ``tox -e benchmark`` runs): the whole study.

1. every variant under grouped k-fold CV, specified and tuned settings, evaluation layer,
   random-forest head (``run_study``);
2. the profile's ``optimism_variant`` again under a plain stratified split, to show the optimism
   that grouping removes;
3. the pytest-benchmark throughput suite (JSON saved in the run folder);
4. the report (``report.md`` + figures) and the leaderboard CSVs.

Profile ``auto``: full on CUDA, quick on CPU. Data: ``--data-dir`` > ``SMIDS_DATA_DIR`` > synthetic.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .layout import source_root
from .study import StudyResult, prepare, run_prepared
from .study_config import StudyConfig

log = logging.getLogger("smids_eval.benchmark")


@dataclass
class BenchmarkResult:
    study: StudyResult
    random_split: StudyResult | None
    throughput_json: Path | None
    report: Path
    minutes: float


def run_throughput(json_path: Path) -> Path | None:
    """The pytest-benchmark suite in ``benchmark/`` (when the repository is at hand)."""
    root = source_root()
    suite = root / "benchmark" if root is not None else None
    if suite is None or not suite.is_dir():
        log.warning("benchmark/ suite not found next to the package: throughput not measured")
        return None
    cmd = [sys.executable, "-m", "pytest", str(suite), "--benchmark-only", "-q", "-p",
           "no:cacheprovider", f"--benchmark-json={json_path}", "--benchmark-columns=min,mean,rounds"]
    log.info("throughput suite: %s", " ".join(cmd))
    done = subprocess.run(cmd, cwd=root)
    if done.returncode != 0:
        log.warning("throughput suite exit %d: a speed target was missed or a benchmark failed "
                    "(see above)", done.returncode)
    return json_path if json_path.is_file() else None


def run_benchmark(config: StudyConfig, throughput: bool = True) -> BenchmarkResult:
    """The study, its random-split twin, the throughput suite and the report."""
    from .report.markdown import build_report

    t0 = time.perf_counter()
    ctx = prepare(config)
    study = run_prepared(ctx)
    random_split = None
    optimism = ctx.profile.benchmark.optimism_variant
    if optimism:
        log.info("grouping optimism: %s under a plain stratified split", optimism)
        random_split = run_prepared(prepare(config.replace(
            split="random", settings=("specified",), rf=False, variants=(optimism,))))
    throughput_json = None
    if ctx.profile.benchmark.throughput and throughput:
        throughput_json = run_throughput(study.run.throughput.resolve())
    report = build_report(study.run.root, dataset=ctx.dataset,
                          random_split_run=random_split.run.root if random_split else None,
                          throughput_json=throughput_json)
    minutes = (time.perf_counter() - t0) / 60
    log.info("benchmark done in %.1f min: %s", minutes, report)
    return BenchmarkResult(study, random_split, throughput_json, report, minutes)


if __name__ == "__main__":
    import sys

    from smids_eval.cli import module_main

    sys.exit(module_main("benchmark"))
