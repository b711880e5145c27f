"""``python -m smids_eval.predict``: classify new sperm crops with a finished run's fold models.

Each fold model of the chosen variant and setting (``RUN/models/<variant>/fold<k>-<setting>.pt``)
is rebuilt exactly as trained (same backbone weights and, for random weights, the same run seed
for the frozen prefix), run on the images (decoded like the data layer: RGB, bilinear resize to
the profile's image_size) and passed through that fold's confidence artifacts (temperature,
OOD detector at the threshold keeping 95% of validation images, conformal sets, 5%-risk
acceptance threshold).

With several folds (default: every fold of the ``tuned`` setting) the folds are an ensemble:

* prob_<class>: mean of the folds' temperature-scaled probabilities; predicted_class its argmax,
  max_prob its maximum;
* mc_mi: mean of the folds' MC-dropout mutual information (empty for non-dropout variants);
* ood_score: mean of the folds' scores (higher = more in-distribution); in_distribution: a strict
  majority of the folds call the image in-distribution (a tie counts as out);
* conformal_set: union of the folds' sets (conservative: covers at least as often as each fold);
* decision: ``accept`` only if every fold accepts (confident and in-distribution) and every
  fold's predicted class equals the ensemble's; otherwise ``refer``.

With one fold (``--fold K``) the row is exactly that fold's output.

Output: one CSV row per input path (files in folders are found recursively; hidden files are
skipped). status is ``ok``, ``unreadable`` (corrupt, empty or missing file; see ``error``) or
``not_an_image`` (extension not one of .bmp .png .jpg .jpeg .tif .tiff); those rows have empty
prediction columns and never stop the batch. Model files are pickles: only use run folders you
trust.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import CLASSES
from .data.decode import read_image
from .data.scan import IMAGE_SUFFIXES
from .engine import Engine
from .errors import ConfigError, SmidsError
from .evaluate.base import SLUGS
from .io import write_csv
from .run_folder import RunFolder, _safe
from .saved_model import build_engine, check_state, load_fold_model

log = logging.getLogger("smids_eval.predict")
SETTINGS = ("tuned", "specified")
OK, UNREADABLE, NOT_AN_IMAGE = "ok", "unreadable", "not_an_image"
PROB_COLUMNS = [f"prob_{s}" for s in SLUGS]
COLUMNS = ["path", "status", "error", "predicted_class", *PROB_COLUMNS, "max_prob", "mc_mi",
           "ood_score", "in_distribution", "conformal_set", "decision", "variant", "setting",
           "folds"]
BATCH = 256  # images decoded and predicted at a time (bounds memory on large folders)


# --------------------------------------------------------------------------- run folder


def available_variants(run: Path) -> list[str]:
    """Variants with at least one saved model in ``run/models`` (RF heads have none)."""
    models = run / "models"
    if not models.is_dir():
        return []
    return sorted(d.name.replace("_plus_", "+") for d in models.iterdir()
                  if d.is_dir() and any(d.glob("fold*-*.pt")))


def model_files(run: Path, variant: str, setting: str, fold: int | None) -> list[Path]:
    """The model files to use; a ConfigError says what exists when the request does not."""
    if not run.is_dir():
        raise ConfigError(f"run folder {run} does not exist; pass --run with a folder written by "
                          f"python -m smids_eval.study (e.g. results/<run-name>)")
    variants = available_variants(run)
    if not variants:
        raise ConfigError(f"{run} has no saved models under models/; is it a finished study run "
                          f"folder? (only neural variants save models, not +RF heads)")
    if variant not in variants:
        hint = " (random-forest heads save no model)" if variant.endswith("+RF") else ""
        raise ConfigError(f"variant {variant!r} has no models in {run / 'models'}{hint}; "
                          f"available: {', '.join(variants)}")
    folder = RunFolder(run).model(variant, 0, setting).parent
    found = {}
    for path in folder.glob("fold*-*.pt"):
        k, _, s = path.stem.removeprefix("fold").partition("-")
        if k.isdigit():
            found.setdefault(s, {})[int(k)] = path
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


# --------------------------------------------------------------------------- inputs


def collect_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly plus every non-hidden file under named folders (sorted), once each."""
    out: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if f.is_file() and not any(part.startswith(".") for part in rel):
                    out[f] = None
        else:
            out[p] = None
    return list(out)


def decode(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8, exactly as ``smids_eval.data.decode.decode_files`` decodes."""
    return np.asarray(read_image(path).resize((size, size), Image.Resampling.BILINEAR))


def _status_row(path: Path, status: str, error: str = "") -> dict:
    return {"path": str(path), "status": status, "error": error}


def read_batch(paths: list[Path], size: int) -> tuple[list[dict], list[int], np.ndarray]:
    """Rows for every path, the indices that decoded, and their (n, size, size, 3) images."""
    rows, good, images = [], [], []
    for i, path in enumerate(paths):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            msg = ("no such file" if not path.exists() else
                   f"extension {path.suffix or '(none)'!r} is not one of "
                   f"{' '.join(sorted(IMAGE_SUFFIXES))}")
            rows.append(_status_row(path, UNREADABLE if not path.exists() else NOT_AN_IMAGE, msg))
            continue
        try:
            images.append(decode(path, size))
        except Exception as exc:  # any decoder failure is this file's problem, not the batch's
            reason = "no such file" if not path.exists() else f"{type(exc).__name__}: {exc}"
            rows.append(_status_row(path, UNREADABLE, reason))
            continue
        rows.append(_status_row(path, OK))
        good.append(i)
    arr = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    return rows, good, arr


# --------------------------------------------------------------------------- ensemble


def combine(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Fold frames (``ConfidenceArtifacts.apply`` output, same rows) → one ensemble frame,
    by the rules in the module docstring."""
    probs = np.mean([f[PROB_COLUMNS].to_numpy(float) for f in frames], axis=0)
    top = probs.argmax(1)
    out = pd.DataFrame({"predicted_class": np.asarray(CLASSES)[top]})
    out[PROB_COLUMNS] = probs
    out["max_prob"] = probs.max(1)
    out["mc_mi"] = np.mean([f["mc_mi"].to_numpy(float) for f in frames], axis=0)
    out["ood_score"] = np.mean([f["ood_score"].to_numpy(float) for f in frames], axis=0)
    votes = np.sum([f["in_distribution"].to_numpy(bool) for f in frames], axis=0)
    out["in_distribution"] = 2 * votes > len(frames)
    members = [[set(s.split("|")) - {""} for s in f["conformal_set"]] for f in frames]
    out["conformal_set"] = ["|".join(c for c in CLASSES if any(c in m[i] for m in members))
                            for i in range(len(out))]
    agree = np.all([f["predicted_class"].to_numpy() == out["predicted_class"].to_numpy()
                    for f in frames], axis=0)
    accept = np.all([f["decision"].to_numpy() == "accept" for f in frames], axis=0)
    out["decision"] = np.where(accept & agree & out["in_distribution"], "accept", "refer")
    return out


class Predictor:
    """The fold models of one variant and setting, ready to classify uint8 images."""

    def __init__(self, run: str | Path, variant: str, setting: str = "tuned",
                 fold: int | None = None, device: str = "auto", weights_file: str | None = None):
        self.run, self.variant, self.setting = Path(run), variant, setting
        self.paths = model_files(self.run, variant, setting, fold)
        self.models = [load_fold_model(p) for p in self.paths]
        engines: dict[tuple, Engine] = {}
        self.engines = []
        for saved, path in zip(self.models, self.paths, strict=True):
            if saved["variant"].get("name") != variant or saved["setting"] != setting:
                raise ConfigError(f"{path} holds {saved['variant'].get('name')} "
                                  f"{saved['setting']}, not {variant} {setting}; the run folder "
                                  f"was edited by hand: rerun the study")
            key = (repr(saved["variant"]), repr(saved["profile"]), saved["weights"],
                   saved["provenance"]["run_seed"])
            if key not in engines:  # folds of one run share the backbone: build it once
                engines[key] = build_engine(saved, device, weights_file, path)
            check_state(engines[key], saved, path)
            self.engines.append(engines[key])
        self.size = self.engines[0].profile.data.image_size
        self.folds = [int(m["fold"]) for m in self.models]

    def predict_images(self, images: np.ndarray) -> pd.DataFrame:
        """Ensemble frame (see ``combine``) for uint8 images (N, size, size, 3)."""
        frames, features = [], {}
        for saved, engine in zip(self.models, self.engines, strict=True):
            if id(engine) not in features:
                features[id(engine)] = engine.prefix_features(images, augment=False)[:, 0]
            out = engine.predict(saved["suffix_state"], features[id(engine)],
                                 mc_seed=int(saved["provenance"]["run_seed"]))
            frames.append(saved["artifacts"].apply(out))
        return combine(frames)

    def predict_paths(self, paths: Iterable[str | Path], batch: int = BATCH) -> pd.DataFrame:
        """One row per input (see ``COLUMNS``); bad files get a status, never an exception."""
        files = collect_inputs(paths)
        parts = []
        for start in range(0, len(files), batch):
            chunk = files[start:start + batch]
            rows, good, images = read_batch(chunk, self.size)
            frame = pd.DataFrame(rows)
            if good:
                pred = self.predict_images(images)
                pred.index = good
                frame = frame.join(pred)
            parts.append(frame)
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
        frame = frame.reindex(columns=COLUMNS)
        frame["in_distribution"] = frame["in_distribution"].astype("boolean")
        frame["variant"], frame["setting"] = self.variant, self.setting
        frame["folds"] = "|".join(map(str, self.folds))
        return frame


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smids_eval.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files and/or folders (searched recursively)")
    p.add_argument("--run", required=True, metavar="RUN_DIR",
                   help="run folder written by python -m smids_eval.study (holds models/)")
    p.add_argument("--variant", required=True, metavar="NAME",
                   help="variant whose models to use, e.g. F.1 (an unknown name lists the run's)")
    p.add_argument("--setting", choices=SETTINGS, default="tuned",
                   help="training setting of the models (default: tuned)")
    p.add_argument("--fold", default="all", metavar="K|all",
                   help="one outer fold's model (0-based, as in the run's file names) or 'all' "
                   "for the fold ensemble (default: all)")
    p.add_argument("--out", metavar="CSV",
                   help="output CSV (default: RUN_DIR/predict-<variant>.csv); written atomically")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device (default: auto = cuda, then mps, then cpu)")
    p.add_argument("--weights-file", metavar="PATH",
                   help="the VGG19 weights file the run was trained with; required (and checked "
                   "by hash) when the run used --weights-file")
    p.add_argument("--batch", type=int, default=BATCH,
                   help=f"images decoded and predicted at a time (default {BATCH})")
    return p


def _parse_fold(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit():
        raise ConfigError(f"--fold {text!r}: pass a fold number (0, 1, …) or 'all'")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        if args.batch < 1:
            raise ConfigError(f"--batch must be ≥ 1 (got {args.batch})")
        predictor = Predictor(args.run, args.variant, args.setting, _parse_fold(args.fold),
                              args.device, args.weights_file)
        frame = predictor.predict_paths(args.paths, batch=args.batch)
        out = Path(args.out) if args.out else Path(args.run) / f"predict-{_safe(args.variant)}.csv"
        write_csv(out, frame)
    except SmidsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = frame["status"].value_counts()
    decisions = frame["decision"].value_counts()
    print(f"{len(frame)} inputs → {out}: {counts.get(OK, 0)} ok "
          f"({decisions.get('accept', 0)} accept, {decisions.get('refer', 0)} refer), "
          f"{counts.get(UNREADABLE, 0)} unreadable, {counts.get(NOT_AN_IMAGE, 0)} not an image; "
          f"{args.variant} {args.setting}, folds {frame['folds'].iloc[0] if len(frame) else '-'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
