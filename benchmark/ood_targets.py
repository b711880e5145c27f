"""Issue 9's targets for the confidence index, checked on a finished run's fold rows.

    python benchmark/ood_targets.py RUN_DIR [--variant NAME --setting SETTING]

Reads RUN_DIR/folds.csv.gz (or an older run's folds.csv; every arm, or one) and prints each
target with the measured value and PASS/FAIL: false alarms on held-out acquisition groups,
flagged share of foreign-lab sets and of the strongest stain / grey / magnification shifts,
selective risk at the validation threshold, Mondrian per-class coverage, and the batch test on
held-out groups and foreign-lab batches.
Exit status 0 whether or not targets pass: this measures, it does not gate.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from smids_eval.data.classes import SLUGS
from smids_eval.report.markdown import FALSE_ALARM_TOLERANCE, md_table
from smids_eval.run_folder import folds_table

FLAGGED = "ood_{}_in_distribution_flagged"
STRONGEST = ("stain_s3", "hed_stain_s3", "grey_s3", "pseudo_colour_s3", "zoom_in_s3", "zoom_out_s3")


def targets(folds: pd.DataFrame, alpha: float = 0.1, risk: float = 0.05) -> pd.DataFrame:
    """One row per target: what, measured, target, pass."""
    rows = []

    def add(what, measured, target, ok):
        rows.append({"target": what, "measured": measured, "goal": target, "pass": bool(ok)})

    held = folds.get(FLAGGED.format("heldout"))
    if held is not None:
        add("held-out folds called in-distribution (min over fold rows)",
            f"{1 - held.max():.3f} (mean {1 - held.mean():.3f})",
            f">= {1 - FALSE_ALARM_TOLERANCE:.2f}", held.max() <= FALSE_ALARM_TOLERANCE)
    labs = [c for c in folds if c.startswith("ood_lab_") and c.endswith("_in_distribution_flagged")]
    for c in labs:
        add(f"{c[4:-24]} flagged (min over fold rows)", f"{folds[c].min():.3f}", ">= 0.95",
            folds[c].min() >= 0.95)
    for name in STRONGEST:
        c = FLAGGED.format(name)
        if c in folds:
            add(f"{name} flagged (mean)", f"{folds[c].mean():.3f}", ">= 0.95",
                folds[c].mean() >= 0.95)
    if "sel_val_thr_risk_msp" in folds:
        realised = folds["sel_val_thr_risk_msp"]
        ok = (realised.isna() | (realised <= risk + 1e-12)).mean()
        add(f"fold rows with realised selective risk <= {risk:.0%} (none accepted counts as ok)",
            f"{ok:.3f} of {len(folds)} (worst {realised.max():.3f}, "
            f"{int(realised.isna().sum())} rows accept nothing)", ">= 0.90", ok >= 0.9)
    for method, label in (("lac_mondrian", "Mondrian LAC"),
                          ("lac_mondrian_newgroups", "Mondrian LAC, new-group calibrated (predict's)")):
        for slug in SLUGS:
            c = f"cp_{method}_coverage_{slug}_a{alpha:g}"
            if c in folds:
                gap = abs(folds[c].mean() - (1 - alpha))
                add(f"{label} coverage, {slug} (mean)", f"{folds[c].mean():.3f}",
                    f"within 0.03 of {1 - alpha:.2f}", gap <= 0.03)
    if "batch_heldout_false_alarm" in folds:
        n = folds["batch_heldout_batches"].sum()
        rate = np.nansum(folds["batch_heldout_false_alarm"] * folds["batch_heldout_batches"]) / max(n, 1)
        add("batch test: held-out group batches of 50 with p < 0.01", f"{rate:.3f} of {int(n)}",
            "<= 0.05", rate <= 0.05)
    for c in [c for c in folds if c.startswith("batch_lab_") and c.endswith("_p")]:
        add(f"batch test: {c[6:-2]} batches of 50 with p < 0.01", f"{(folds[c] < 0.01).mean():.3f}"
            f" (max p {folds[c].max():.2g})", "1.0", (folds[c] < 0.01).all())
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--variant")
    p.add_argument("--setting")
    args = p.parse_args(argv)
    path = folds_table(args.run_dir)
    if not path.is_file():
        print(f"error: {path} not found; pass a run folder written by smids_eval.study",
              file=sys.stderr)
        return 2
    folds = pd.read_csv(path)
    if args.variant:
        folds = folds[folds["variant"] == args.variant]
    if args.setting:
        folds = folds[folds["setting"] == args.setting]
    print("\n".join(md_table(targets(folds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
