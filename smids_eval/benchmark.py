"""``python -m smids_eval.benchmark`` (what ``tox -e benchmark`` runs): the whole study.

1. every variant under donor-grouped k-fold CV, specified and tuned settings, evaluation layer,
   random-forest head (``smids_eval.study``);
2. the profile's ``optimism_variant`` again under a plain stratified split, to show the optimism
   that donor grouping removes;
3. the pytest-benchmark throughput suite (JSON saved in the run folder);
4. the report (``report.md`` + figures) and the leaderboard CSVs.

Profile ``auto``: full on CUDA, quick on CPU. Data: ``--data-dir`` > ``SMIDS_DATA_DIR`` > synthetic.
Extra options are passed to the study (e.g. ``--folds 17`` or ``--storage URL``).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from .errors import SmidsError
from .study import build_parser, prepare, run_all

log = logging.getLogger("smids_eval.benchmark")
REPO = Path(__file__).resolve().parent.parent


def run_throughput(json_path: Path) -> Path | None:
    """The pytest-benchmark suite in ``benchmark/`` (when the repository is at hand)."""
    suite = REPO / "benchmark"
    if not suite.is_dir():
        log.warning("benchmark/ suite not found next to the package: throughput not measured")
        return None
    cmd = [sys.executable, "-m", "pytest", str(suite), "--benchmark-only", "-q", "-p",
           "no:cacheprovider", f"--benchmark-json={json_path}", "--benchmark-columns=min,mean,rounds"]
    log.info("throughput suite: %s", " ".join(cmd))
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode != 0:
        log.warning("throughput suite exit %d: a speed target was missed or a benchmark failed "
                    "(see above)", done.returncode)
    return json_path if json_path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.prog = "python -m smids_eval.benchmark"
    parser.description = __doc__
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput suite")
    argv = sys.argv[1:] if argv is None else list(argv)  # reused for the random-split run
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    try:
        ctx = prepare(args)
        run = run_all(ctx)
        random_run = None
        optimism = ctx.profile.benchmark.optimism_variant
        if optimism:
            log.info("grouping optimism: %s under a plain stratified split", optimism)
            rargs = parser.parse_args([*argv, "--split", "random", "--settings", "specified",
                                       "--no-rf"])
            rargs.variant = [optimism]
            rctx = prepare(rargs)
            random_run = run_all(rctx).root
        throughput = None
        if ctx.profile.benchmark.throughput and not args.no_throughput:
            throughput = run_throughput((run.root / "throughput.json").resolve())
        from .report.markdown import build_report

        report = build_report(run.root, dataset=ctx.dataset, random_split_run=random_run,
                              throughput_json=throughput)
    except SmidsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished folds are saved; rerun to resume", file=sys.stderr)
        return 130
    log.info("benchmark done in %.1f min: %s", (time.perf_counter() - t0) / 60, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
