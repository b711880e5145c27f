"""Classify new sperm crops with a finished run's fold models (``python -m smids_eval.predict``).

Each fold model of the chosen variant and setting (``RUN/models/<variant>/fold<k>-<setting>.pt``)
is rebuilt exactly as trained (same backbone weights and, for random weights, the same run seed
for the frozen prefix), run on the images (decoded like the data layer: RGB, bilinear resize to
the profile's image_size) and passed through that fold's confidence artifacts, all fitted on the
fold's validation images (never its test fold):

* temperature scaling of the probabilities;
* the in-distribution rule: an image is in-distribution only if BOTH an acquisition-level
  detector (default ``image_stats``: colour, stain, background, illumination, sharpness,
  noise and scale statistics of the image; or ``block_moments`` of VGG19 blocks 1-2) AND a
  semantic detector (default ``knn`` on the head's penultimate features) keep it, at the
  thresholds keeping 95% of new acquisition groups of the training lab (acquisition detector:
  fitted on training + validation images, threshold from leave-one-group-out scores) and
  97.5% of a new group's validation images (semantic detector: leave-one-group-out over the
  validation groups, as the conformal sets); the detectors and shares are set in the profile's [evaluate] section
  (``acquisition_detector``, ``semantic_detector``, ``acquisition_keep``, ``semantic_keep``);
* class-conditional (Mondrian) conformal LAC sets at alpha = 0.1, calibrated for new acquisition
  groups (the rank is raised until the leave-one-group-out coverage of the validation groups
  reaches 90%: a new slide is a new group, not more crops of the validation ones);
* the acceptance threshold on the calibrated max probability: the lowest one whose
  Clopper-Pearson upper bound on the validation error rate stays <= risk_target (5%) at
  confidence 1 - risk_delta (90%), tested in fixed sequence (Learn-then-Test), so the error rate
  among accepted crops of the same distribution is <= 5% with probability >= 90%.

With several folds (default: every outer fold of repeat 0, ``tuned`` setting) the folds are an
ensemble (each repeat re-draws the folds of the same data; ``--repeat R`` picks another):

* prob_<class>: mean of the folds' temperature-scaled probabilities; predicted_class its argmax,
  max_prob its maximum;
* mc_mi: mean of the folds' MC-dropout mutual information (empty for non-dropout variants);
* ood_score: mean of the folds' scores (>= 0 = in-distribution for one fold; higher = more
  in-distribution); in_distribution: a strict majority of the folds call the image
  in-distribution (a tie counts as out);
* conformal_set: union of the folds' sets (conservative: covers at least as often as each fold);
* decision: ``accept`` only if the image is in-distribution, every fold is confident (max
  probability at or above its risk-controlling threshold) and every fold's predicted class
  equals the ensemble's; otherwise ``refer`` with ``refer_reason`` = the first failing check:
  ``ood``, ``low_confidence`` or ``fold_disagreement``.

With one fold (``--fold K``) the row is exactly that fold's output.

A whole folder is also judged as a batch: with at least ``BATCH_TEST_MIN`` (20) readable images,
each fold's batch test compares their acquisition statistics with that fold's validation images
(MMD two-sample test, "Failing Loudly", Rabanser et al. 2019; p-value calibrated on how much a new
acquisition group of the training lab differs when the validation images hold enough groups,
else a permutation p-value). The median p-value over the folds is printed in the summary line
and written with the details to ``<out>.batch.json``; p < 0.01 means the batch as a whole does
not look like the training lab's acquisitions even if single images pass.

Output: one CSV row per input path (files in folders are found recursively; hidden files are
skipped). status is ``ok``, ``unreadable`` (corrupt, empty or missing file; see ``error``) or
``not_an_image`` (extension not in ``data.scan.IMAGE_SUFFIXES``); those rows have empty
prediction columns and never stop the batch. Model files are pickles: only use run folders you
trust.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .. import CLASSES
from ..data.classes import SLUGS
from ..data.decode import decode_image
from ..data.scan import IMAGE_SUFFIXES, folder_files, is_image_file
from ..engine import Engine
from ..errors import ConfigError
from ..evaluate.descriptors import describe, image_statistics
from ..naming import SETTINGS as _SETTINGS
from ..run_folder import RunFolder
from ..saved_model import build_engine, check_state

log = logging.getLogger("smids_eval.predict")
SETTINGS = tuple(reversed(_SETTINGS))  # "tuned" first: the default
OK, UNREADABLE, NOT_AN_IMAGE = "ok", "unreadable", "not_an_image"
PROB_COLUMNS = [f"prob_{s}" for s in SLUGS]
COLUMNS = ["path", "status", "error", "predicted_class", *PROB_COLUMNS, "max_prob", "mc_mi",
           "ood_score", "in_distribution", "conformal_set", "decision", "refer_reason", "variant",
           "setting", "folds"]
BATCH = 256  # images decoded and predicted at a time (bounds memory on large folders)
BATCH_TEST_MIN = 20  # readable images from which a folder is also tested as a batch
BATCH_ALPHA = 0.01


# --------------------------------------------------------------------------- inputs


def collect_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly plus every file of named folders (``data.scan.folder_files``:
    recursive, sorted, hidden skipped; non-images kept to be reported), once each."""
    out: dict[Path, None] = {}
    for p in map(Path, paths):
        out.update(dict.fromkeys(folder_files(p) if p.is_dir() else [p]))
    return list(out)


def _status_row(path: Path, status: str, error: str = "") -> dict:
    return {"path": str(path), "status": status, "error": error}


def read_batch(paths: list[Path], size: int) -> tuple[list[dict], list[int], np.ndarray]:
    """Rows for every path, the indices that decoded, and their (n, size, size, 3) images."""
    rows, good, images = [], [], []
    for i, path in enumerate(paths):
        if not is_image_file(path):
            msg = ("no such file" if not path.exists() else
                   f"extension {path.suffix or '(none)'!r} is not one of "
                   f"{' '.join(sorted(IMAGE_SUFFIXES))}")
            rows.append(_status_row(path, UNREADABLE if not path.exists() else NOT_AN_IMAGE, msg))
            continue
        try:
            images.append(decode_image(path, size)[0])  # exactly as the training images
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
    confident = np.all([f["confident"].to_numpy(bool) for f in frames], axis=0)
    in_dist = out["in_distribution"].to_numpy(bool)
    out["decision"] = np.where(in_dist & confident & agree, "accept", "refer")
    out["refer_reason"] = np.select([~in_dist, ~confident, ~agree],
                                    ["ood", "low_confidence", "fold_disagreement"], "")
    return out


class Predictor:
    """The fold models of one variant and setting, ready to classify uint8 images."""

    def __init__(self, run: str | Path, variant: str, setting: str = "tuned",
                 fold: int | None = None, device: str = "auto", weights_file: str | None = None,
                 repeat: int = 0):
        self.run = RunFolder.locate(run).root  # an --out folder holding one run: that run
        self.variant, self.setting = variant, setting
        self.paths = RunFolder(self.run).model_files(variant, setting, fold, repeat)
        self.models = [RunFolder.load_model(p) for p in self.paths]
        engines: dict[tuple, Engine] = {}
        self.engines = []
        for saved, path in zip(self.models, self.paths, strict=True):
            computed_as = RunFolder(self.run).aliases().get(variant, variant)
            if saved.variant_name not in (variant, computed_as) or saved.setting != setting:
                raise ConfigError(f"{path} holds {saved.variant_name} {saved.setting}, not "
                                  f"{variant} {setting}; the run folder was edited by hand: "
                                  f"rerun the study")
            key = (repr(saved.variant), repr(saved.profile), saved.weights, saved.seed)
            if key not in engines:  # folds of one run share the backbone: build it once
                engines[key] = build_engine(saved, device, weights_file, path)
            check_state(engines[key], saved, path)
            self.engines.append(engines[key])
        self.size = self.engines[0].profile.data.image_size
        self.folds = [int(m.fold) for m in self.models]

    def predict_images(self, images: np.ndarray, stats: np.ndarray | None = None) -> pd.DataFrame:
        """Ensemble frame (see ``combine``) for uint8 images (N, size, size, 3); ``stats``:
        their ``image_statistics`` when the caller already has them."""
        stats = image_statistics(images) if stats is None else stats
        frames, features, described = [], {}, {}
        for saved, engine in zip(self.models, self.engines, strict=True):
            if id(engine) not in features:
                features[id(engine)] = engine.prefix_features(images, augment=False)[:, 0]
                described[id(engine)] = {"image_stats": stats, **describe(
                    images, engine.model.prefix, engine.variant.channels, ("block_moments",))}
            out = engine.predict(saved.suffix_state, features[id(engine)], mc_seed=saved.seed)
            frames.append(saved.artifacts.apply(out.with_descriptors(described[id(engine)])))
        return combine(frames)

    def batch_test(self, stats: np.ndarray) -> dict | None:
        """The folder as one batch (its images' ``image_statistics``) against each fold's
        validation images (see the module docstring); None below ``BATCH_TEST_MIN`` images or
        for runs without batch tests."""
        tests = [m.artifacts.batch_test for m in self.models
                 if getattr(m.artifacts, "batch_test", None) is not None]
        if len(stats) < BATCH_TEST_MIN or not tests:
            return None
        results = [t.test(stats).as_dict() for t in tests]
        p = float(np.median([r["p_value"] for r in results]))
        return {"n_images": int(len(stats)), "p_value": p, "alpha": BATCH_ALPHA,
                "shifted": bool(p < BATCH_ALPHA), "folds": self.folds, "per_fold": results}

    def predict_paths(self, paths: Iterable[str | Path], batch: int = BATCH) -> pd.DataFrame:
        """One row per input (see ``COLUMNS``); bad files get a status, never an exception.
        The batch test of all readable images is left in ``self.batch_result``."""
        files = collect_inputs(paths)
        parts, stats_images = [], []
        for start in range(0, len(files), batch):
            chunk = files[start:start + batch]
            rows, good, images = read_batch(chunk, self.size)
            frame = pd.DataFrame(rows)
            if good:
                stats = image_statistics(images)  # once: descriptors and the batch test
                pred = self.predict_images(images, stats)
                pred.index = good
                frame = frame.join(pred)
                stats_images.append(stats)
            parts.append(frame)
        self.batch_result = (self.batch_test(np.concatenate(stats_images))
                             if stats_images else None)
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
        frame = frame.reindex(columns=COLUMNS)
        frame["in_distribution"] = frame["in_distribution"].astype("boolean")
        frame["variant"], frame["setting"] = self.variant, self.setting
        frame["folds"] = "|".join(map(str, self.folds))
        return frame
