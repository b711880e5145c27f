"""``run_benchmark(StudyConfig)`` (what ``tox -e benchmark`` runs): the whole study.

1. every variant under grouped k-fold CV, specified and tuned settings, evaluation layer,
   random-forest head (``run_study``);
2. the profile's ``optimism_variant`` again under a plain stratified split, to show the optimism
   that grouping removes, and with the profile's ``sensitivity_groups`` numbers of inferred
   acquisition groups (run folders ``RUN-groupsN``), to show how much the estimate depends on
   the grouping;
3. the pytest-benchmark throughput suite (JSON saved in the run folder);
4. the report (``report.md`` + figures) of the grouped run, with the twin's comparison
   (``report=False``: none; a failed report is logged and the results stand);
5. when the checkout's ``results/`` holds a committed run of the same name, the reproduction
   deltas against it (``smids_eval.reproduction``: logged and ``RUN/reproduction.json``).

The study's ``timings.json`` then covers the whole job (its stages: the study's, plus
``LATER_STAGES``), with the main study's own wall, normalised cost and stages under
``main_study`` (``timing.benchmark_record``); the report's "Cost of this run", written before its
own stage ended, is then re-written from it. With ``--plan`` nothing runs:
the plans of the study and of its twins are returned (and printed by the CLI).

Profile ``auto``: full on CUDA, quick on CPU. Data: ``--data-dir`` > ``SMIDS_DATA_DIR`` > synthetic.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..device import measure_bf16_peak
from ..layout import source_root
from ..plan import StudyPlan, plan_study
from ..reproduction import check_reproduction, summary_line
from ..study import StudyResult, prepare, run_prepared
from ..study_config import StudyConfig
from ..timing import (
    RANDOM_SPLIT,
    REPORT,
    SENSITIVITY,
    THROUGHPUT,
    RunCost,
    StageTimer,
    benchmark_record,
)

log = logging.getLogger("smids_eval.benchmark")


@dataclass
class BenchmarkResult:
    study: StudyResult
    random_split: StudyResult | None
    throughput_json: Path | None
    published: tuple[Path, str] | None  # report.md and its 'At a glance' text; None: not written
    minutes: float

    @property
    def report(self) -> Path | None:
        return self.published[0] if self.published else None


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


def random_split_config(config: StudyConfig, variant: str) -> StudyConfig:
    """The optimism twin: one variant, specified settings, a plain stratified split."""
    return config.replace(split="random", settings=("specified",), rf=False, variants=(variant,))


def sensitivity_config(config: StudyConfig, variant: str, n_groups: int,
                       run_name: str) -> StudyConfig:
    """A grouping-sensitivity twin: one variant, specified settings, ``n_groups`` inferred
    acquisition groups, in a run folder named after the study's (``RUN-groupsN``)."""
    return config.replace(n_groups=n_groups, settings=("specified",), rf=False,
                          variants=(variant,), run_name=f"{run_name}-groups{n_groups}")


def twin_configs(config: StudyConfig, ctx) -> list[StudyConfig]:
    """The study's twins (``ctx`` is its context): the optimism variant under a plain
    stratified split, then under the profile's other numbers of inferred groups (only when the
    groups are inferred: a manifest's groups have no number to vary)."""
    variant = ctx.profile.benchmark.optimism_variant
    if not variant:
        return []
    twins = [random_split_config(config, variant)]
    if ctx.grouping == "inferred":
        twins += [sensitivity_config(config, variant, n, ctx.run.root.name)
                  for n in ctx.profile.benchmark.sensitivity_groups if n != config.n_groups]
    return twins


def plan_benchmark(config: StudyConfig) -> list[StudyPlan]:
    """``--plan``: the study's plan and its twins' (nothing trained or written)."""
    ctx = prepare(config, write=False)
    plans = [plan_study(ctx)]
    for twin in twin_configs(config, ctx):
        plans.append(plan_study(prepare(twin, write=False), rates=plans[0].rates,
                                evaluation=plans[0].evaluation))
    return plans


def run_benchmark(config: StudyConfig, throughput: bool = True, report: bool = True
                  ) -> BenchmarkResult | list[StudyPlan]:
    """The study, its random-split twin, the throughput suite and the report (with
    ``config.plan_only``: their plans only)."""
    from ..report.markdown import publish_report, rewrite_cost

    if config.plan_only:
        return plan_benchmark(config)
    timer = StageTimer()
    with timer.stage("prepare"):
        ctx = prepare(config)
    cost = RunCost(timer)
    study = run_prepared(ctx, cost)
    twins = []
    for twin_config in twin_configs(config, ctx) if study.complete else []:
        log.info("twin: %s with %s", ", ".join(twin_config.variants),
                 "a plain stratified split" if not twin_config.grouped
                 else f"{twin_config.n_groups} inferred acquisition groups")
        # its own timings.json is in its own run folder
        with timer.stage(RANDOM_SPLIT if not twin_config.grouped else SENSITIVITY):
            twin = RunCost(peak_gflops=cost.peak_gflops)
            with twin.timer.stage("prepare"):
                twin_ctx = prepare(twin_config)
            twins.append(run_prepared(twin_ctx, twin))
    random_split = twins[0] if twins else None
    throughput_json = None
    if ctx.profile.benchmark.throughput and throughput:
        with timer.stage(THROUGHPUT):
            throughput_json = run_throughput(study.run.throughput.resolve())
    published = None
    if report and study.complete:
        with timer.stage(REPORT):
            published = publish_report(
                study.run.root, dataset=ctx.dataset,
                random_split_run=random_split.run.root if random_split else None,
                throughput_json=throughput_json)
    for done in (study, *twins):
        record = check_reproduction(done.run.root)
        if record is not None:
            log.info(summary_line(record))
    end_peak = measure_bf16_peak(cost.device) if cost.device is not None else None
    study.run.write_timings(benchmark_record(cost.record(), study.timings, end_peak))
    if published:   # written before the later stages ended: its cost is the whole job's now
        rewrite_cost(study.run.root)
    minutes = timer.wall() / 60
    log.info("benchmark done in %.1f min: %s", minutes,
             published[0] if published else study.run.root)
    return BenchmarkResult(study, random_split, throughput_json, published, minutes)
