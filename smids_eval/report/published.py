"""Published SMIDS results (``studies/published_smids.toml``) beside this run's numbers.

Context, not a comparison: the papers split images at random (or do not say how), with no
grouping by acquisition and their own preprocessing, so the section says they are not
comparable one to one. Values are read from the TOML only, never typed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..run_folder import folds_table
from ..toml import load_toml, studies_dir

FILE = "published_smids.toml"
SPLITS = ("random", "unspecified")
METRICS = {"accuracy": "cls_accuracy", "macro_f1": "cls_macro_f1"}
REQUIRED = ("label", "citation", "year", "model", "metric", "split", "source_note")
UNVERIFIED = "value not verified offline"
CAVEAT = ("Published figures are context, **not comparable one to one** with this suite's: "
          "the papers split images at random or do not say how (no grouping by acquisition, so "
          "crops of one acquisition can sit in training and test), and use their own "
          "preprocessing, image sizes and training budgets. This run holds out whole groups; "
          "its random-split twin, when present, shows how much a plain split alone adds.")


def load_published(path: str | Path | None = None) -> list[dict]:
    """The entries of the published-results TOML, each checked for what the table needs."""
    path = Path(path) if path else studies_dir() / FILE
    entries = load_toml(path).get("result", [])
    for i, entry in enumerate(entries):
        missing = [k for k in REQUIRED if not str(entry.get(k, "")).strip()]
        if missing:
            raise ConfigError(f"{path}: result {i + 1} lacks {', '.join(missing)}")
        if entry["split"] not in SPLITS:
            raise ConfigError(f"{path}: result {i + 1} has split {entry['split']!r}; use one of "
                              f"{', '.join(SPLITS)}")
        if entry["metric"] not in METRICS:
            raise ConfigError(f"{path}: result {i + 1} has metric {entry['metric']!r}; use one "
                              f"of {', '.join(METRICS)}")
    return entries


def _percent(values: pd.Series) -> str:
    values = values.dropna() * 100
    if values.empty:
        return "–"
    spread = f" ± {values.std():.1f}" if len(values) > 1 else ""
    return f"{values.mean():.1f}{spread}"


def _suite_row(source: str, split: str, arm: tuple[str, str], folds: pd.DataFrame) -> dict:
    rows = folds[(folds["variant"] == arm[0]) & (folds["setting"] == arm[1])]
    return {"source": source, "model": f"VGG19 {arm[0]} [{arm[1]}]", "split": split,
            **{name: _percent(rows[col]) if col in rows else "–"
               for name, col in METRICS.items()}}


def suite_rows(r) -> list[dict]:
    """This run's best neural arm, and each arm of the random-split twin (with the same arm
    of this run beside it when it is not the best)."""
    best = r.best_arm()
    if best is None:
        return []
    split = str(r.config.get("split", "grouped"))
    label = f"grouped ({r.grouping_label})" if split == "grouped" else split
    rows = [_suite_row("this run, best arm", label, best, r.folds)]
    if r.random_split_run is None:
        return rows
    twin = pd.read_csv(folds_table(r.random_split_run))
    for arm in sorted(set(zip(twin["variant"], twin["setting"], strict=True))):
        if arm != best and ((r.folds["variant"] == arm[0]) & (r.folds["setting"] == arm[1])).any():
            rows.append(_suite_row("this run", label, arm, r.folds))
        rows.append(_suite_row("random-split twin", "random", arm, twin))
    return rows


def published_rows(entries: list[dict]) -> list[dict]:
    rows = []
    for e in entries:
        value = e.get("value")
        shown = f"{float(value):.2f}".rstrip("0").rstrip(".") if value is not None else UNVERIFIED
        row = {"source": e["label"], "model": e["model"],
               "split": e["split"], **dict.fromkeys(METRICS, "")}
        row[e["metric"]] = shown
        rows.append(row)
    return rows


def published_table(r, path: str | Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One table (this suite first, then the papers) and one source line per paper."""
    entries = load_published(path)
    table = pd.DataFrame(suite_rows(r) + published_rows(entries)).replace({np.nan: ""})
    table = table.rename(columns={"accuracy": "accuracy (%)", "macro_f1": "macro-F1 (%)"})
    notes = [f"- {e['label']}: {e['citation']} ({e['year']})"
             + (f", doi {e['doi']}" if e.get("doi") else "") + f": {e['source_note']}"
             + ("" if e.get("value") is not None else f" ({UNVERIFIED})") for e in entries]
    return table, notes
