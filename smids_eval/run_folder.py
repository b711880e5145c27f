"""The run folder's format: every path, name and reader of ``results/<run>/``.

Each finished (arm, fold, setting) is one JSON row written last and atomically, after its
predictions and model, so an interrupted study resumes exactly where it stopped and never
corrupts a finished fold. Nothing outside this module spells a path inside a run folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import ConfigError
from .io import atomic_open, load_torch, save_torch, write_csv, write_text
from .metric_names import PARTS, records
from .naming import dir_name, from_dir_name, is_rf
from .toml import load_toml
from .tomlw import dumps

log = logging.getLogger(__name__)

#: key of a fold JSON holding the parts of each metric column (``metric_names.records``)
TIDY_KEY = "metric_parts"
#: the fold JSON's record of which process computed it (host:pid; not a table column)
WORKER_KEY = "computed_by"
#: the columns of ``metrics.csv.gz``: the fold's identity, then the tidy parts and the value
TIDY_COLUMNS = ["run", "variant", "setting", "repeat", "fold", *PARTS, "value"]

#: per-fold file stem: repeat r of the group-to-fold assignment, outer fold k, setting
_FOLD_FILE = re.compile(r"r(\d+)-fold(\d+)-(.+)")
log = logging.getLogger(__name__)


def folds_table(root: str | Path) -> Path:
    """The wide per-fold table of run folder ``root``: ``folds.csv.gz``, or the plain
    ``folds.csv`` of an older run folder when only that exists (the ``.gz`` path when neither
    does, so that a missing table is named by its current name)."""
    current = RunFolder(Path(root)).folds_csv
    legacy = current.with_suffix("")
    return legacy if not current.is_file() and legacy.is_file() else current


def claim_key(arm: str, repeat: int, fold: int, setting: str) -> str:
    """Name of the claim (``claims.Claims``) on one fold × arm: its fold file's, under claims/."""
    return f"{dir_name(arm)}/{fold_stem(repeat, fold, setting)}"


def fold_stem(repeat: int, fold: int, setting: str) -> str:
    return f"r{repeat}-fold{fold}-{setting}"


@dataclass
class SavedFold:
    """One fold's trained neural arm as stored in ``models/<arm>/fold<k>-<setting>.pt``: what
    predict and Grad-CAM need to rebuild the network exactly and apply its confidence rules."""

    variant: dict            # Variant.as_dict()
    setting: str
    fold: int
    repeat: int              # which group-to-fold assignment (0 = the seed's own)
    suffix_state: dict       # trainable suffix (trained conv blocks + head) state dict
    hyper: dict              # optimizer, learning_rate, weight_decay
    profile: dict            # Profile.as_dict() the fold was trained under
    weights: str             # backbone weights id (random | imagenet:… | file:…)
    artifacts: Any           # evaluate.ConfidenceArtifacts fitted on this fold's validation part
    provenance: dict         # run_* columns; run_seed rebuilds a random-weights prefix

    @property
    def variant_name(self) -> str:
        return str(self.variant.get("name"))

    @property
    def seed(self) -> int:
        return int(self.provenance["run_seed"])

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: object, path: Path) -> SavedFold:
        needed = [f.name for f in fields(cls)]
        missing = sorted(set(needed) - set(data)) if isinstance(data, dict) else needed
        if missing or "run_seed" not in data["provenance"]:
            raise ConfigError(f"model file {path} lacks {missing or ['provenance.run_seed']}; it "
                              f"was written by another smids_eval version: rerun the study fold")
        return cls(**{k: data[k] for k in needed})


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------------ files people read
    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def splits(self) -> Path:
        return self.root / "splits.csv"

    @property
    def folds_csv(self) -> Path:
        """Wide table, gzipped (MBs as text): one row per fold, one column per metric; readers
        use ``folds_table``, which also finds a legacy ``folds.csv``."""
        return self.root / "folds.csv.gz"

    @property
    def metrics_csv(self) -> Path:
        """Long table, gzipped (tens of MB as text): one row per fold × metric (``TIDY_COLUMNS``)."""
        return self.root / "metrics.csv.gz"

    @property
    def same_cell_csv(self) -> Path:
        """Copies and re-crops of one cell found at preparation (``cells.SameCell.table``)."""
        return self.root / "same_cell.csv"

    @property
    def leaderboard(self) -> Path:
        return self.root / "leaderboard.csv"

    @property
    def leaderboard_summary(self) -> Path:
        return self.root / "leaderboard_summary.csv"

    @property
    def comparisons(self) -> Path:
        return self.root / "comparisons.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def throughput(self) -> Path:
        return self.root / "throughput.json"

    @property
    def timings(self) -> Path:
        """What the last invocation cost: stage seconds, peak RSS, bf16 peak, ETA."""
        return self.root / "timings.json"

    def predict_csv(self, variant: str) -> Path:
        return self.root / f"predict-{dir_name(variant)}.csv"

    # ------------------------------------------------------------------ per-fold artefacts
    def fold_json(self, arm: str, repeat: int, fold: int, setting: str) -> Path:
        return self.root / "folds" / dir_name(arm) / f"{fold_stem(repeat, fold, setting)}.json"

    def predictions(self, arm: str, repeat: int, fold: int, setting: str) -> Path:
        return (self.root / "predictions" / dir_name(arm)
                / f"{fold_stem(repeat, fold, setting)}.csv.gz")

    def model(self, arm: str, repeat: int, fold: int, setting: str) -> Path:
        return self.root / "models" / dir_name(arm) / f"{fold_stem(repeat, fold, setting)}.pt"

    def history(self, arm: str, repeat: int, fold: int, setting: str) -> Path:
        return self.root / "history" / dir_name(arm) / f"{fold_stem(repeat, fold, setting)}.csv"

    def done(self, arm: str, repeat: int, fold: int, setting: str) -> bool:
        return self.fold_json(arm, repeat, fold, setting).is_file()

    # ------------------------------------------------------------------ config
    def read_config(self) -> dict:
        return load_toml(self.config)

    def write_config(self, config: dict) -> None:
        write_text(self.config, dumps(config))

    # ------------------------------------------------------------------ cost
    def write_timings(self, record: dict) -> None:
        write_text(self.timings, json.dumps(record, indent=1, default=float))

    def read_timings(self) -> dict:
        return json.loads(self.timings.read_text()) if self.timings.is_file() else {}

    # ------------------------------------------------------------------ writing a finished fold
    def save_fold(self, row: dict, predictions: pd.DataFrame, model: SavedFold | None) -> None:
        """Predictions and model first, the fold's JSON row last: a row on disk means the fold
        is complete."""
        key = row["variant"], row["repeat"], row["fold"], row["setting"]
        with atomic_open(self.predictions(*key), "wb") as fh:
            predictions.to_csv(fh, index=False, compression={"method": "gzip", "mtime": 0})
        if model is not None:
            save_torch(self.model(*key), model.to_dict())
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        clean[TIDY_KEY] = records(row)
        clean[WORKER_KEY] = f"{socket.gethostname()}:{os.getpid()}"
        write_text(self.fold_json(*key),
                   json.dumps(clean, indent=1, sort_keys=False, default=float))

    # ------------------------------------------------------------------ readers
    def _fold_records(self) -> list[dict]:
        """Every finished fold JSON (unreadable leftovers are ignored and redone on resume)."""
        found = []
        for path in sorted((self.root / "folds").glob("*/*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return found

    def rows(self) -> pd.DataFrame:
        """Every finished fold row, wide (one column per metric)."""
        rows = [{k: v for k, v in r.items() if k not in (TIDY_KEY, WORKER_KEY)}
                for r in self._fold_records()]
        return _sorted(pd.DataFrame(rows), ["variant", "setting", "repeat", "fold"])

    def tidy(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(metrics, parts): the long table (``TIDY_COLUMNS``, one row per fold × metric) and
        the distinct metric columns with their parts and ``kind``. Folds written before the
        tidy records existed are left out with one warning."""
        rows, parts, old = [], {}, 0
        for r in self._fold_records():
            if TIDY_KEY not in r:
                old += 1
                continue
            ident = {k: r.get(k) for k in TIDY_COLUMNS[:5]}
            for rec in r[TIDY_KEY]:
                parts.setdefault(rec["column"], rec)
                value = r.get(rec["column"])
                rows.append({**ident, **{p: rec[p] for p in PARTS},
                             "value": float("nan") if value is None else value})
        if old:
            log.warning("%s: %d fold file(s) predate metrics.csv (no tidy records) and are left "
                        "out of it; rerun those folds with --force to include them", self.root, old)
        metrics = _sorted(pd.DataFrame(rows, columns=TIDY_COLUMNS), TIDY_COLUMNS[1:5])
        return metrics, pd.DataFrame(list(parts.values()),
                                     columns=["column", *PARTS, "kind"])

    def write_folds_csv(self) -> pd.DataFrame:
        """``folds.csv.gz`` (see ``rows``); a legacy ``folds.csv`` beside it is removed, so
        that readers never see two tables of one run."""
        frame = self.rows()
        write_csv(self.folds_csv, frame)
        self.folds_csv.with_suffix("").unlink(missing_ok=True)
        return frame

    def write_metrics_csv(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``metrics.csv.gz`` (see ``tidy``); returns (metrics, parts)."""
        metrics, parts = self.tidy()
        write_csv(self.metrics_csv, metrics)
        return metrics, parts

    def prediction_files(self) -> list[tuple[str, int, int, str, Path]]:
        """(arm, repeat, fold, setting, path) of every saved per-image prediction file."""
        return self._per_fold("predictions", ".csv.gz")

    def history_files(self) -> list[tuple[str, int, int, str, Path]]:
        return self._per_fold("history", ".csv")

    def _per_fold(self, folder: str, suffix: str) -> list[tuple[str, int, int, str, Path]]:
        out = []
        for path in sorted((self.root / folder).glob(f"*/r*-fold*-*{suffix}")):
            m = _FOLD_FILE.fullmatch(path.name.removesuffix(suffix))
            if m:
                out.append((from_dir_name(path.parent.name), int(m[1]), int(m[2]), m[3], path))
        return out

    # ------------------------------------------------------------------ saved models
    def model_variants(self) -> list[str]:
        """Arms with at least one saved model (random-forest heads save none)."""
        return sorted({arm for arm, *_ in self._per_fold("models", ".pt")})

    def saved_models(self, arm: str, setting: str, repeat: int = 0) -> list[Path]:
        """Model files of one arm, setting and repeat in fold order (empty when none)."""
        return [p for a, r, _, s, p in sorted(self._per_fold("models", ".pt"), key=lambda t: t[2])
                if a == arm and s == setting and r == repeat]

    def aliases(self) -> dict[str, str]:
        """Arm name → the arm that computed it (identical computations are run once, see
        ``smids_eval.arms``), from the fold rows' ``aliases`` column."""
        rows = self.rows()
        if rows.empty or "aliases" not in rows:
            return {}
        return {alias: arm for arm, names in zip(rows["variant"], rows["aliases"], strict=True)
                if isinstance(names, str) for alias in names.split("|") if alias}

    def model_files(self, variant: str, setting: str, fold: int | None = None,
                    repeat: int = 0) -> list[Path]:
        """The saved models of one arm and setting (one fold, or every fold of one repeat in
        order); an alias resolves to the arm that computed it; a ConfigError says what exists
        when the request does not."""
        if not self.root.is_dir():
            raise ConfigError(f"run folder {self.root} does not exist; pass a folder written by "
                              f"python -m smids_eval.study (e.g. results/<run-name>)")
        saved = [(a, k, s, p) for a, r, k, s, p in self._per_fold("models", ".pt") if r == repeat]
        variants = sorted({a for a, _, _, _ in saved})
        if variant not in variants and variant in self.aliases():
            variant = self.aliases()[variant]
        if not variants:
            raise ConfigError(f"{self.root} has no saved models under models/; is it a finished "
                              f"study run folder? (only neural variants save models, not +RF heads)")
        if variant not in variants:
            hint = " (random-forest heads save no model)" if is_rf(variant) else ""
            raise ConfigError(f"variant {variant!r} has no models in {self.root / 'models'}{hint}; "
                              f"available: {', '.join(variants)}")
        found: dict[str, dict[int, Path]] = {}
        for a, k, s, path in saved:
            if a == variant:
                found.setdefault(s, {})[k] = path
        folder = self.model(variant, repeat, 0, setting).parent
        if setting not in found:
            raise ConfigError(f"variant {variant} has no {setting!r} models in {folder}; available "
                              f"settings: {', '.join(sorted(found))} (pass --setting)")
        folds = found[setting]
        if fold is not None:
            if fold not in folds:
                raise ConfigError(f"variant {variant} has no fold {fold} ({setting}) in {folder}; "
                                  f"available folds: {', '.join(map(str, sorted(folds)))} or all")
            return [folds[fold]]
        return [folds[k] for k in sorted(folds)]

    def is_run(self) -> bool:
        """A study wrote this folder (its ``config.toml`` or ``models/`` is there)."""
        return self.config.is_file() or (self.root / "models").is_dir()

    @classmethod
    def locate(cls, path: str | Path) -> RunFolder:
        """``path`` when it is a run folder (or holds none); the one run folder inside it (a
        study's ``--out`` folder holding one run); a ConfigError naming them when it holds
        several, so that ``predict --run results`` does not guess."""
        run = cls(Path(path))
        if run.is_run() or not run.root.is_dir():
            return run
        inside = sorted(p for p in run.root.iterdir() if p.is_dir() and cls(p).is_run())
        if len(inside) > 1:
            raise ConfigError(f"{run.root} holds runs {', '.join(p.name for p in inside)}: "
                              f"pass one of them to --run")
        if inside:
            log.info("%s is not a run folder; using the run inside it: %s", run.root, inside[0])
            return cls(inside[0])
        return run

    @staticmethod
    def load_model(path: Path) -> SavedFold:
        """One saved fold model, checked for its fields (model files are pickles: trust needed)."""
        data = load_torch(path, weights_only=False, what="model file",
                          remedy="rerun that fold with python -m smids_eval.study --force")
        return SavedFold.from_dict(data, Path(path))

    @staticmethod
    def fold_of(model_path: Path) -> int:
        return int(_FOLD_FILE.fullmatch(Path(model_path).stem)[2])


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if not frame.empty:
        frame = frame.sort_values(keys, kind="stable")
    return frame.reset_index(drop=True)
