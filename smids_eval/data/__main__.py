"""``python -m smids_eval.data --report [--data-dir DIR]``: print the data report."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import SmidsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smids_eval.data", description=__doc__)
    parser.add_argument("--report", action="store_true", help="print the data report")
    parser.add_argument("--data-dir", help="class-folder data set (default: SMIDS_DATA_DIR, "
                        "else the synthetic set)")
    parser.add_argument("--cache-dir", help="decoded-image cache (default: SMIDS_CACHE_DIR or the "
                        "user cache dir)")
    parser.add_argument("--size", type=int, default=64, help="decoded size in px (default 64)")
    args = parser.parse_args(argv)
    if not args.report:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from . import load_dataset
    from .report import render_report

    try:
        dataset = load_dataset(args.data_dir, size=args.size, cache_dir=args.cache_dir)
    except SmidsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_report(dataset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
