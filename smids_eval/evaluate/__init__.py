"""Evaluation of one cross-validation fold: scorers on ``ModelOutputs`` that return flat,
namespaced ``{key: float}`` dicts (one CSV row per fold), and the per-fold confidence artifacts
that predict.py applies to new images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import CLASSES
from ..config import EvalConfig
from ..data.classes import SLUGS, class_slug
from ..outputs import ModelOutputs
from .base import Scorer, scaled
from .calibration import CalibrationScorer, TemperatureScaler
from .conformal import ConformalPredictor, ConformalScorer
from .mc_dropout import MCDropoutScorer, mutual_information
from .metrics import ClassificationScorer
from .ood import DETECTORS, Detector, OODScorer
from .selective import SelectiveScorer, coverage_at_risk
from .shifts import shift_accuracy_keys

#: name -> Scorer class built with ``from_config``; a new scorer is one class plus one line
SCORERS: dict[str, type[Scorer]] = {
    "classification": ClassificationScorer,
    "calibration": CalibrationScorer,
    "mc_dropout": MCDropoutScorer,
    "selective": SelectiveScorer,
    "conformal": ConformalScorer,
}


def evaluate_fold(train: ModelOutputs | None, val: ModelOutputs, test: ModelOutputs, *,
                  ood_sets: dict[str, ModelOutputs], shifted: dict[str, ModelOutputs],
                  config: EvalConfig) -> dict[str, float]:
    """Every scorer in ``SCORERS`` fitted on (train, val) and scored on ``test``; OOD metrics of
    every applicable detector for each of ``ood_sets`` against ``test``; accuracy and drop for
    each of ``shifted`` (keys ``"<shift>_s<k>"``, labelled copies of test images). Pass shifted
    sets in ``ood_sets`` too to get their detection metrics. ``cal_temperature`` is the fold's
    temperature fitted on ``val``: pass it on to ``fit_confidence_artifacts``."""
    res: dict[str, float] = {}
    for scorer in SCORERS.values():
        res.update(scorer.from_config(config).fit(train, val).score(test))
    if ood_sets:
        res.update(OODScorer().fit(train, val).score_sets(test, ood_sets))
    if shifted:
        clean = float((test.probs.argmax(1) == test.labels).mean())
        res.update(shift_accuracy_keys(clean, {k: float((o.probs.argmax(1) == o.labels).mean())
                                               for k, o in shifted.items()}))
    return res


@dataclass
class ConfidenceArtifacts:
    """What predict.py needs for one fold's model (picklable). Probabilities are temperature
    scaled; conformal sets and the selective threshold are fitted on those scaled validation
    probabilities. A crop is ``accept`` iff its calibrated max probability reaches
    ``confidence_threshold`` (validation risk <= risk_target) and it is in-distribution;
    otherwise ``refer`` (to the embryologist)."""

    temperature: float
    detector_name: str
    detector: Detector
    conformal: ConformalPredictor
    alpha: float
    confidence_threshold: float
    risk_target: float

    def apply(self, outputs: ModelOutputs) -> pd.DataFrame:
        """One row per image: predicted_class, prob_<slug>, max_prob, mc_mi (NaN without MC),
        ood_score (higher = more in-distribution), in_distribution, conformal_set, decision."""
        cal = scaled(outputs, self.temperature)
        probs = cal.probs
        ood_score = self.detector.score(outputs)
        in_dist = ood_score >= self.detector.threshold_
        sets = self.conformal.predict_sets(probs, self.alpha)
        max_prob = probs.max(axis=1)
        frame = pd.DataFrame({"predicted_class": np.asarray(CLASSES)[probs.argmax(axis=1)]})
        for k, slug in enumerate(SLUGS):
            frame[f"prob_{slug}"] = probs[:, k]
        frame["max_prob"] = max_prob
        frame["mc_mi"] = (mutual_information(outputs.mc_probs) if outputs.mc_probs is not None
                          else np.nan)
        frame["ood_score"] = ood_score
        frame["in_distribution"] = in_dist
        frame["conformal_set"] = ["|".join(c for c, m in zip(CLASSES, row, strict=True) if m) for row in sets]
        frame["decision"] = np.where((max_prob >= self.confidence_threshold) & in_dist,
                                     "accept", "refer")
        return frame


def fit_confidence_artifacts(train: ModelOutputs | None, val: ModelOutputs, config: EvalConfig,
                             *, detector: str = "knn", alpha: float = 0.1,
                             temperature: float | None = None) -> ConfidenceArtifacts:
    """Temperature, OOD detector (+ 95%-keep threshold), conformal LAC qhat at ``alpha`` and the
    selective threshold at ``config.risk_target``, all fitted on this fold's train/val outputs.
    Falls back to ``msp`` when ``detector`` needs training outputs and ``train`` is None.

    ``temperature``: the fold's already fitted temperature (``evaluate_fold``'s
    ``cal_temperature``, fitted on the same ``val``), so a fold fits T once and its reported
    calibration and its saved model use the same value; None fits it here the same way."""
    if temperature is None:
        temperature = TemperatureScaler().fit(val.logits, val.labels).temperature_
    cal_val = scaled(val, temperature)
    if DETECTORS[detector].requires_train and train is None:
        detector = "msp"
    det = DETECTORS[detector]().fit(train, val)
    alphas = tuple(sorted({alpha, *config.conformal_alphas}))
    conformal = ConformalPredictor("lac", alphas).fit(cal_val.probs, val.labels)
    correct = cal_val.probs.argmax(1) == val.labels
    _, threshold = coverage_at_risk(cal_val.probs.max(1), correct, config.risk_target)
    return ConfidenceArtifacts(temperature=temperature, detector_name=detector, detector=det,
                               conformal=conformal, alpha=alpha, confidence_threshold=threshold,
                               risk_target=config.risk_target)


__all__ = ["SCORERS", "DETECTORS", "ConfidenceArtifacts", "evaluate_fold",
           "fit_confidence_artifacts", "class_slug"]
