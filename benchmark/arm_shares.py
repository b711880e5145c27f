"""Where a run's fold work went: process-seconds per variant and setting, and each one's share.

    python benchmark/arm_shares.py RUN_DIR [RUN_DIR ...]

Sums ``wall_seconds`` of every fold JSON under RUN_DIR/folds/ (the time one process spent on
that fold × arm: tuning, final fit, evaluation, saving; feature-cache builds are not in it) and
prints one table per run, largest first, with the share of the run's total and which processes
computed them (``computed_by``). Issue 13 measures F.1's share with it, before and after a
change, as a ratio within one run (absolute seconds differ between hosts).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from smids_eval.report.markdown import md_table


def shares(run: Path) -> pd.DataFrame:
    """One row per (variant, setting): process-seconds, share of the total, results."""
    rows = []
    for path in sorted((run / "folds").glob("*/*.json")):
        record = json.loads(path.read_text())
        rows.append({"variant": path.parent.name, "setting": path.stem.rsplit("-", 1)[-1],
                     "seconds": float(record.get("wall_seconds", 0.0)),
                     "computed_by": record.get("computed_by", "?")})
    if not rows:
        raise SystemExit(f"{run}: no fold JSONs under folds/; pass a study's run folder")
    frame = pd.DataFrame(rows)
    table = (frame.groupby(["variant", "setting"], as_index=False)
             .agg(seconds=("seconds", "sum"), results=("seconds", "size"))
             .sort_values("seconds", ascending=False, ignore_index=True))
    table["share"] = table["seconds"] / table["seconds"].sum()
    workers = Counter(frame["computed_by"])
    table.attrs["workers"] = dict(workers)
    return table


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for arg in argv:
        table = shares(Path(arg))
        by_variant = table.groupby("variant")["share"].sum().sort_values(ascending=False)
        print(f"\n{arg}: {table['seconds'].sum():.0f} process-seconds of fold work, "
              f"{int(table['results'].sum())} results; computed by "
              + ", ".join(f"{k} ({v})" for k, v in table.attrs["workers"].items()))
        print("\n".join(md_table(table.round({"seconds": 1, "share": 3}))))
        print("share per variant: " + ", ".join(f"{k} {v:.1%}" for k, v in by_variant.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
