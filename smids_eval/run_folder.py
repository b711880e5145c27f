"""Layout of a run folder; each finished (variant, fold, setting) is one JSON file written last,
so an interrupted study resumes exactly where it stopped and never corrupts a finished fold."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .io import write_csv, write_text


def _safe(name: str) -> str:
    return name.replace("/", "_").replace("+", "_plus_")


@dataclass(frozen=True)
class RunFolder:
    root: Path

    # files people read
    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def splits(self) -> Path:
        return self.root / "splits.csv"

    @property
    def folds_csv(self) -> Path:
        return self.root / "folds.csv"

    @property
    def leaderboard(self) -> Path:
        return self.root / "leaderboard.csv"

    @property
    def comparisons(self) -> Path:
        return self.root / "comparisons.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    # per-fold artefacts
    def fold_json(self, variant: str, fold: int, setting: str) -> Path:
        return self.root / "folds" / _safe(variant) / f"fold{fold}-{setting}.json"

    def predictions(self, variant: str, fold: int, setting: str) -> Path:
        return self.root / "predictions" / _safe(variant) / f"fold{fold}-{setting}.csv.gz"

    def model(self, variant: str, fold: int, setting: str) -> Path:
        return self.root / "models" / _safe(variant) / f"fold{fold}-{setting}.pt"

    def history(self, variant: str, fold: int, setting: str) -> Path:
        return self.root / "history" / _safe(variant) / f"fold{fold}-{setting}.csv"

    def done(self, variant: str, fold: int, setting: str) -> bool:
        return self.fold_json(variant, fold, setting).is_file()

    def write_row(self, row: dict) -> None:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        write_text(self.fold_json(row["variant"], row["fold"], row["setting"]),
                   json.dumps(clean, indent=1, sort_keys=False, default=float))

    def rows(self) -> pd.DataFrame:
        """Every finished fold row (unreadable leftovers are ignored and redone on resume)."""
        rows = []
        for path in sorted((self.root / "folds").glob("*/*.json")):
            try:
                rows.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame = frame.sort_values(["variant", "setting", "fold"], kind="stable")
        return frame.reset_index(drop=True)

    def write_folds_csv(self) -> pd.DataFrame:
        frame = self.rows()
        write_csv(self.folds_csv, frame)
        return frame
