"""Does a fresh run reproduce the committed one? Per-column deltas against ``results/<run>``.

``tox -e benchmark`` writes into the git-ignored ``runs/``; when the repository holds a committed
run folder of the same name (same profile, data fingerprint, folds, seed and split), the fresh
fold rows are compared with it, printed and recorded in ``RUN/reproduction.json``.

Tolerance (same seed, profile and hardware, ``run_hardware``: the device type and, on a CPU,
its bf16 kernel family, ``device.cpu_kind``): decisions and everything computed from them
exactly (``EXACT``: classification, calibration, conformal, selective, MC-dropout columns,
|Δ| ≤ 1e-6); OOD, shift and batch columns within ``LOOSE`` = 0.15, because thresholded
detection rates (FPR95, flagged shares) jump by whole images when a float reduction order
changes a tie among random-forest or bf16 scores (issue 14 measured up to 0.117 between two
uninterrupted runs). Different hardware (an AMX host against an AVX512-BF16 one rounds bf16
products differently) is reported, not judged; a run from before ``run_hardware`` was recorded
is judged by device type alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .io import write_text
from .layout import source_root
from .run_folder import folds_table

KEYS = ["variant", "setting", "repeat", "fold"]
EXACT_PREFIXES = ("cls_", "cal_", "cp_", "sel_", "mc_")
LOOSE_PREFIXES = ("ood_", "shift_", "batch_")
EXACT, LOOSE = 1e-6, 0.15
REPORT = "reproduction.json"


def committed_twin(run_root: Path, results: Path | None = None) -> Path | None:
    """``results/<run name>`` of the checkout (or ``results``) when it holds a finished run
    other than ``run_root`` itself."""
    results = results if results is not None else (
        source_root() / "results" if source_root() is not None else None)
    if results is None:
        return None
    twin = Path(results) / Path(run_root).name
    if not folds_table(twin).is_file() or twin.resolve() == Path(run_root).resolve():
        return None
    return twin


def _rows(folds: pd.DataFrame) -> pd.DataFrame:
    folds = folds if "repeat" in folds else folds.assign(repeat=0)
    return folds.set_index(KEYS).sort_index()


def column_deltas(fresh: pd.DataFrame, committed: pd.DataFrame) -> pd.DataFrame:
    """Max |fresh − committed| per metric column over the fold rows both hold (a value missing
    on one side only counts as a difference of 1); columns: column, tolerance, max_abs_delta,
    rows."""
    a, b = _rows(fresh), _rows(committed)
    shared = a.index.intersection(b.index)
    out = []
    for col in sorted(set(a.columns) & set(b.columns)):
        tol = EXACT if col.startswith(EXACT_PREFIXES) else (
            LOOSE if col.startswith(LOOSE_PREFIXES) else None)
        if tol is None or not (pd.api.types.is_numeric_dtype(a[col])
                               and pd.api.types.is_numeric_dtype(b[col])):
            continue
        x, y = a.loc[shared, col].to_numpy(float), b.loc[shared, col].to_numpy(float)
        one_sided = np.isnan(x) != np.isnan(y)
        delta = np.where(one_sided, 1.0, np.abs(np.nan_to_num(x) - np.nan_to_num(y)))
        out.append({"column": col, "tolerance": tol,
                    "max_abs_delta": float(delta.max()) if len(delta) else 0.0,
                    "rows": len(shared)})
    return pd.DataFrame(out, columns=["column", "tolerance", "max_abs_delta", "rows"])


def _first(folds: pd.DataFrame, col: str) -> str:
    return str(folds[col].iloc[0]) if col in folds and len(folds) else "unknown"


def compare_runs(fresh_root: Path, committed_root: Path) -> dict:
    """The reproduction record of ``fresh_root`` against ``committed_root``."""
    fresh = pd.read_csv(folds_table(fresh_root))
    committed = pd.read_csv(folds_table(committed_root))
    deltas = column_deltas(fresh, committed)
    over = deltas[deltas["max_abs_delta"] > deltas["tolerance"]]
    device = [_first(f, "run_device").split("/")[0] for f in (fresh, committed)]
    kinds = [_first(f, "run_hardware") for f in (fresh, committed)]
    judged = device[0] == device[1] and ("unknown" in kinds or kinds[0] == kinds[1])
    worst = deltas.sort_values("max_abs_delta", ascending=False).head(5)
    fresh_keys, committed_keys = (set(_rows(f).index) for f in (fresh, committed))
    return {
        "committed_run": str(committed_root), "fresh_run": str(fresh_root),
        "committed_commit": _first(committed, "run_commit"),
        "fresh_commit": _first(fresh, "run_commit"),
        "same_device_type": device[0] == device[1], "device_types": device,
        "hardware": kinds, "judged": judged,
        "rows_compared": len(fresh_keys & committed_keys),
        "rows_only_fresh": len(fresh_keys - committed_keys),
        "rows_only_committed": len(committed_keys - fresh_keys),
        "columns_compared": len(deltas),
        "tolerance": {"exact": EXACT, "exact_prefixes": list(EXACT_PREFIXES), "loose": LOOSE,
                      "loose_prefixes": list(LOOSE_PREFIXES)},
        "max_abs_delta": {p.rstrip("_"): float(deltas.loc[deltas["column"].str.startswith(p),
                                                          "max_abs_delta"].max())
                          for p in (*EXACT_PREFIXES, *LOOSE_PREFIXES)
                          if deltas["column"].str.startswith(p).any()},
        "largest": dict(zip(worst["column"], worst["max_abs_delta"].astype(float), strict=True)),
        "columns_over_tolerance": over["column"].tolist(),
        "within_tolerance": bool(over.empty),
    }


def summary_line(record: dict) -> str:
    verdict = ("reproduces it within tolerance" if record["within_tolerance"] else
               f"differs beyond tolerance in {len(record['columns_over_tolerance'])} columns "
               f"(e.g. {', '.join(record['columns_over_tolerance'][:3])})")
    caveat = "" if record["judged"] else (
        f" (hardware differs: {' vs '.join(record['hardware'])}; not judged)"
        if record["same_device_type"] else
        f" (device types differ: {' vs '.join(record['device_types'])}; not judged)")
    parts = ", ".join(f"{k} {v:.2g}" for k, v in record["max_abs_delta"].items())
    return (f"reproduction vs {record['committed_run']} (commit {record['committed_commit']}): "
            f"{record['rows_compared']} fold rows, max |Δ| {parts}; {verdict}{caveat}")


def check_reproduction(run_root: Path, results: Path | None = None) -> dict | None:
    """Compare ``run_root`` with its committed twin, write ``RUN/reproduction.json`` and return
    the record (None when there is no committed run of that name)."""
    twin = committed_twin(run_root, results)
    if twin is None:
        return None
    record = compare_runs(run_root, twin)
    write_text(Path(run_root) / REPORT, json.dumps(record, indent=1))
    return record
