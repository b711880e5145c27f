"""``python -m smids_eval.report RUN_DIR``: write RUN_DIR/report.md and RUN_DIR/figures/*.png."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import SmidsError
from .markdown import build_report, run_dataset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smids_eval.report", description=__doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by smids_eval.study")
    p.add_argument("--data-dir", help="the run's class-folder data set, for image sizes, the "
                   "error gallery and Grad-CAM (default: the folder named in config.toml, if it "
                   "still exists)")
    p.add_argument("--cache-dir", help="decoded-image cache (default: $SMIDS_CACHE_DIR or the "
                   "user cache dir)")
    p.add_argument("--no-images", action="store_true", help="skip the sections that need images")
    p.add_argument("--random-split-run", metavar="DIR", help="the same study under --split random "
                   "(default: the sibling RUN_DIR-random-split, if present)")
    p.add_argument("--throughput-json", metavar="FILE", help="pytest-benchmark JSON to tabulate")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        dataset = None if args.no_images else run_dataset(args.run_dir, args.data_dir,
                                                          args.cache_dir)
        path = build_report(args.run_dir, dataset=dataset, random_split_run=args.random_split_run,
                            throughput_json=args.throughput_json)
    except (SmidsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
