"""The ``smids`` command (``smids study|benchmark|predict|report|data``) and the ``python -m``
entry points: the only module that sees argparse.

Each subcommand parses its options into the typed API (``StudyConfig`` and friends) and calls
it; one wrapper gives every command the same logging, errors (``error: …``, exit 2) and Ctrl-C
(exit 130, finished work kept).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError, SmidsError
from .naming import SETTINGS

# --------------------------------------------------------------------------- study / benchmark


def add_study_options(p: argparse.ArgumentParser, out_default: str = "results") -> None:
    """Options of ``StudyConfig`` (shared by ``study`` and ``benchmark``)."""
    p.add_argument("--variant", action="append", metavar="NAME",
                   help="variant from studies/variants.toml (repeatable), or 'all' (default: all)")
    p.add_argument("--profile", default="auto",
                   help="quick | full | auto (full when CUDA is present, else quick) | path.toml")
    p.add_argument("--folds", type=int, help="outer folds (default: the profile's; the number of "
                   "groups gives leave-one-group-out)")
    p.add_argument("--fold", type=int, action="append", metavar="K",
                   help="run only outer fold K (repeatable; default: every fold)")
    p.add_argument("--inner-folds", type=int, help="grouped inner folds for tuning (default: profile)")
    p.add_argument("--repeats", type=int, help="repeated CV: re-draw the group-to-fold assignment "
                   "R times (default: the profile's; repeat 0 is the seed's own folds)")
    p.add_argument("--data-dir", help="class-folder data set (default: $SMIDS_DATA_DIR, else the "
                   "synthetic set)")
    p.add_argument("--groups-file", help="group manifest CSV 'path,donor' (default: the data set's "
                   "donors.csv if present, else inferred acquisition groups)")
    p.add_argument("--n-groups", type=int, default=17,
                   help="number of inferred acquisition groups (default 17)")
    p.add_argument("--drop-conflicts", action="store_true",
                   help="drop every image of a same-cell unit whose images carry different "
                        "labels (default: keep them and report them)")
    p.add_argument("--out", default=out_default, help=f"output folder (default: {out_default}/)")
    p.add_argument("--run-name", help="run folder name (default: PROFILE-DATA-FINGERPRINT-kK-seedS)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device (default: the profile's, auto)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="numeric precision (default: profile's; auto = bf16 where native)")
    p.add_argument("--weights", choices=["auto", "imagenet", "random"],
                   help="backbone weights (default: profile's, auto)")
    p.add_argument("--weights-file", help="VGG19 state dict to use as backbone weights")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, sampler, init (default 0)")
    p.add_argument("--trials", type=int, help="Optuna trials per variant and fold (default: profile)")
    p.add_argument("--storage", help="Optuna storage: SQLAlchemy URL (postgresql://…) or FILE.journal "
                   "shared by several workers (default: SQLite file in the run folder)")
    p.add_argument("--jobs", type=int, default=0,
                   help="worker processes on this machine that share the study (default 0: "
                   "cores / the profile's cpu_threads, on CPU; other workers of the same run "
                   "folder count). The numbers do not depend on it")
    p.add_argument("--split", choices=["grouped", "random"], default="grouped",
                   help="grouped folds (default) or a plain stratified split, to measure the "
                   "optimism that grouping removes")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="comma list of 'specified' (the study's table) and 'tuned' (default both)")
    p.add_argument("--no-rf", action="store_true", help="skip the random-forest head")
    p.add_argument("--ood-dir", help="extra folder of out-of-distribution images to test detectors on")
    p.add_argument("--cache-dir", help="decoded images and feature cache (default: $SMIDS_CACHE_DIR "
                   "or the user cache dir)")
    p.add_argument("--force", action="store_true", help="redo finished folds of the selected variants")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--plan", action="store_true",
                   help="print what the run would do (variants × settings × folds, results "
                   "already done, trials, epochs, feature caches) and an ETA from a few seconds' "
                   "throughput probe; trains nothing, writes nothing")
    p.add_argument("--no-report", action="store_true",
                   help="do not write RUN/report.md nor print its 'At a glance' block at the end "
                   "(python -m smids_eval.report RUN writes it later)")


def study_config(args: argparse.Namespace):
    """argparse namespace → ``StudyConfig`` (validated there)."""
    from .study_config import StudyConfig

    return StudyConfig(
        variants=tuple(args.variant or ["all"]), profile=args.profile, data_dir=args.data_dir,
        groups_file=args.groups_file, n_groups=args.n_groups,
        drop_conflicts=args.drop_conflicts, split=args.split, seed=args.seed,
        folds=args.folds, inner_folds=args.inner_folds, repeats=args.repeats,
        only_folds=tuple(args.fold or ()),
        trials=args.trials, storage=args.storage, jobs=args.jobs,
        settings=tuple(s.strip() for s in args.settings.split(",") if s.strip()),
        rf=not args.no_rf, ood_dir=args.ood_dir, out=args.out, run_name=args.run_name,
        device=args.device, precision=args.precision, weights=args.weights,
        weights_file=args.weights_file, cache_dir=args.cache_dir, force=args.force,
        progress=not args.no_progress, plan_only=args.plan)


def _print_summary(published) -> None:
    """The report's 'At a glance' block on stdout, after the report's path on stderr."""
    if published is not None:
        path, summary = published
        print(f"report: {path}", file=sys.stderr)
        print(summary)


def _study(args) -> int:
    from .report.markdown import publish_report
    from .study import run_study

    result = run_study(study_config(args))
    if args.plan:
        print(result.describe())
    elif not args.no_report and result.complete:  # a failed report is logged (exit 0)
        _print_summary(publish_report(result.run.root, dataset=result.context.dataset))
    return 0


def add_benchmark_options(p: argparse.ArgumentParser) -> None:
    """The study's options, writing to the git-ignored runs/ by default: a newcomer's run must
    neither resume nor rewrite the committed results/ (``--out results`` publishes there)."""
    add_study_options(p, out_default="runs")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput suite")


def _benchmark(args) -> int:
    from .benchmark import run_benchmark

    result = run_benchmark(study_config(args), throughput=not args.no_throughput,
                           report=not args.no_report)
    if args.plan:
        print("\n".join(plan.describe() for plan in result))
    else:  # once, at the very end, for the grouped run (with its random-split twin)
        _print_summary(result.published)
    return 0


# --------------------------------------------------------------------------- predict


def add_predict_options(p: argparse.ArgumentParser) -> None:
    from .predict import BATCH
    from .predict import SETTINGS as PREDICT_SETTINGS

    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files and/or folders (searched recursively)")
    p.add_argument("--run", required=True, metavar="RUN_DIR",
                   help="run folder written by python -m smids_eval.study (holds models/), or "
                   "the study's --out folder when it holds one run")
    p.add_argument("--variant", required=True, metavar="NAME",
                   help="variant whose models to use, e.g. F.1 (an unknown name lists the run's)")
    p.add_argument("--setting", choices=PREDICT_SETTINGS, default="tuned",
                   help="training setting of the models (default: tuned)")
    p.add_argument("--fold", default="all", metavar="K|all",
                   help="one outer fold's model (0-based, as in the run's file names) or 'all' "
                   "for the fold ensemble (default: all)")
    p.add_argument("--repeat", type=int, default=0, metavar="R",
                   help="which repeat's fold models (default 0: the seed's own folds)")
    p.add_argument("--out", metavar="CSV",
                   help="output CSV (default: RUN_DIR/predict-<variant>.csv); written atomically")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device (default: auto = cuda, then mps, then cpu)")
    p.add_argument("--weights-file", metavar="PATH",
                   help="the VGG19 weights file the run was trained with; required (and checked "
                   "by hash) when the run used --weights-file")
    p.add_argument("--batch", type=int, default=BATCH,
                   help=f"images decoded and predicted at a time (default {BATCH})")


def _parse_fold(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit():
        raise ConfigError(f"--fold {text!r}: pass a fold number (0, 1, …) or 'all'")
    return int(text)


def _predict(args) -> int:
    import numpy as np

    from .io import ensure_output_dir, write_csv, write_json
    from .predict import NOT_AN_IMAGE, OK, UNREADABLE, Predictor
    from .run_folder import RunFolder

    if args.batch < 1:
        raise ConfigError(f"--batch must be ≥ 1 (got {args.batch})")
    if args.out:  # checked before any image is read: a wrong --out costs nothing
        if Path(args.out).is_dir():
            raise ConfigError(f"--out {args.out} is a folder; pass the CSV file to write, e.g. "
                              f"{Path(args.out) / ('predict-' + args.variant + '.csv')}")
        ensure_output_dir(Path(args.out).parent, f"--out {args.out}: its folder")
    predictor = Predictor(args.run, args.variant, args.setting, _parse_fold(args.fold),
                          args.device, args.weights_file, repeat=args.repeat)
    frame = predictor.predict_paths(args.paths, batch=args.batch)
    out = Path(args.out) if args.out else RunFolder(predictor.run).predict_csv(args.variant)
    write_csv(out, frame)
    batch = predictor.batch_result
    if batch is not None:
        write_json(out.with_name(out.name + ".batch.json"), batch)
    counts = frame["status"].value_counts()
    decisions = frame["decision"].value_counts()
    reasons = frame["refer_reason"].replace("", np.nan).dropna().value_counts()
    why = ", ".join(f"{n} {r}" for r, n in reasons.items())
    verdict = ("" if batch is None else
               f"; batch test p = {batch['p_value']:.3g}: "
               + ("the batch does NOT look like the training lab's acquisitions"
                  if batch["shifted"] else "no acquisition shift detected"))
    print(f"{len(frame)} inputs → {out}: {counts.get(OK, 0)} ok "
          f"({decisions.get('accept', 0)} accept, {decisions.get('refer', 0)} refer"
          f"{': ' + why if why else ''}), "
          f"{counts.get(UNREADABLE, 0)} unreadable, {counts.get(NOT_AN_IMAGE, 0)} not an image; "
          f"{args.variant} {args.setting}, folds {frame['folds'].iloc[0] if len(frame) else '-'}"
          f"{verdict}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- report / data


def add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by smids_eval.study")
    p.add_argument("--data-dir", help="the run's class-folder data set, for image sizes, the "
                   "error gallery and Grad-CAM (default: the folder recorded in config.toml, if "
                   "it still exists)")
    p.add_argument("--cache-dir", help="decoded-image cache (default: $SMIDS_CACHE_DIR or the "
                   "user cache dir)")
    p.add_argument("--no-images", action="store_true", help="skip the sections that need images")
    p.add_argument("--random-split-run", metavar="DIR", help="the same study under --split random "
                   "(default: the sibling RUN_DIR-random-split, if present)")
    p.add_argument("--throughput-json", metavar="FILE", help="pytest-benchmark JSON to tabulate")
    p.add_argument("--summary", action="store_true", help="print the 'At a glance' and 'Limits "
                   "of this run' blocks to the terminal instead of writing report.md")


def _report(args) -> int:
    from .report.markdown import build_report, run_dataset, summary_text

    try:
        if args.summary:
            print(summary_text(args.run_dir, random_split_run=args.random_split_run))
            return 0
        dataset = None if args.no_images else run_dataset(args.run_dir, args.data_dir,
                                                          args.cache_dir)
        path = build_report(args.run_dir, dataset=dataset, random_split_run=args.random_split_run,
                            throughput_json=args.throughput_json)
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc}; pass a run folder written by smids_eval.study") from exc
    print(path)
    return 0


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", action="store_true", help="print the data report")
    p.add_argument("--data-dir", help="class-folder data set (default: SMIDS_DATA_DIR, "
                   "else the synthetic set)")
    p.add_argument("--cache-dir", help="decoded-image cache (default: SMIDS_CACHE_DIR or the "
                   "user cache dir)")
    p.add_argument("--size", type=int, default=64, help="decoded size in px (default 64)")


def _data(args) -> int:
    from .data import load_dataset
    from .data.report import render_report

    if not args.report:
        print("nothing to do: pass --report (see --help)", file=sys.stderr)
        return 0
    print(render_report(load_dataset(args.data_dir, size=args.size, cache_dir=args.cache_dir)))
    return 0


# --------------------------------------------------------------------------- the command

#: subcommand → (one-line help, option adder, runner, module docstring source)
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "study": ("every selected variant under grouped k-fold CV into a resumable run folder",
              add_study_options, _study),
    "benchmark": ("the main job: study, random-split twin, throughput suite and report",
                  add_benchmark_options, _benchmark),
    "predict": ("classify new crops with a run's fold models: one CSV row per image",
                add_predict_options, _predict),
    "report": ("write RUN_DIR/report.md and its figures", add_report_options, _report),
    "data": ("inspect a data set (--report: counts, sizes, duplicates)", add_data_options, _data),
}

_DESCRIPTIONS = {
    "study": "smids_eval.study", "benchmark": "smids_eval.benchmark",
    "predict": "smids_eval.predict", "report": "smids_eval.report", "data": "smids_eval.data",
}


def _description(command: str) -> str | None:
    import importlib

    return importlib.import_module(_DESCRIPTIONS[command]).__doc__


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``smids`` parser, or one subcommand's parser as ``python -m smids_eval.<command>``."""
    if command is not None:
        help_text, add_options, _ = COMMANDS[command]
        p = argparse.ArgumentParser(prog=f"python -m smids_eval.{command}",
                                    description=_description(command) or help_text,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        add_options(p)
        add_output_options(p)
        return p
    p = argparse.ArgumentParser(prog="smids", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_options, _) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=_description(name),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        add_options(sp)
        add_output_options(sp)
    return p


def add_output_options(p: argparse.ArgumentParser) -> None:
    """How much the command says: every command takes ``--quiet`` / ``--verbose``."""
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true",
                      help="warnings and errors only, no progress bars")
    loud.add_argument("-v", "--verbose", action="store_true", help="debug messages too")


def log_level(args: argparse.Namespace) -> int:
    if getattr(args, "quiet", False):
        return logging.WARNING
    return logging.DEBUG if getattr(args, "verbose", False) else logging.INFO


def run_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """The one wrapper: logging (through tqdm, so a log line never lands on a progress bar's
    line), SmidsError → ``error: …`` and exit 2, Ctrl-C → exit 130."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(log_level(args))
    if getattr(args, "quiet", False) and hasattr(args, "no_progress"):
        args.no_progress = True
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with logging_redirect_tqdm():
            return run(args)
    except SmidsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write outside io.atomic_open (a folder, the Optuna journal, …)
        from .io import WRITE_FAULTS, output_error

        if exc.errno not in WRITE_FAULTS:
            raise
        print(f"error: {output_error(None, exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished folds are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:  # the Optuna database failing under the study (SQLAlchemy)
        message = storage_fault(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


#: what SQLite / PostgreSQL say when the storage cannot take a write, and what that means
_STORAGE_FAULTS = {"disk is full": "no space left on the device",
                   "no space left": "no space left on the device",
                   "readonly database": "the database file or its folder is read-only",
                   "read-only": "the database is read-only",
                   "could not connect": "the database server is unreachable",
                   "connection refused": "the database server is unreachable"}


def storage_fault(exc: BaseException) -> str | None:
    """One line for a SQLAlchemy OperationalError of the Optuna storage, else None."""
    if type(exc).__name__ != "OperationalError" or "sqlalchemy" not in type(exc).__module__:
        return None
    text = str(getattr(exc, "orig", exc) or exc).lower()
    reason = next((why for key, why in _STORAGE_FAULTS.items() if key in text),
                  text.splitlines()[0] if text else type(exc).__name__)
    return (f"the Optuna storage failed: {reason}; finished folds and models are kept (every "
            f"result file is written atomically): free space or fix the storage (--storage), "
            f"then rerun the same command to resume")


def main(argv: list[str] | None = None) -> int:
    """``smids COMMAND [options]``; ``main(["study", "--variant", "F.1"])`` from Python."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return run_command(COMMANDS[args.command][2], args)


def module_main(command: str, argv: list[str] | None = None) -> int:
    """``python -m smids_eval.<command> [options]`` (the same options as ``smids <command>``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command).parse_args(argv)
    return run_command(COMMANDS[command][2], args)


if __name__ == "__main__":
    sys.exit(main())
