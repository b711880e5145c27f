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
from ..metric_names import HELD_OUT, metric_column
from ..outputs import ModelOutputs
from .base import Scorer, scaled
from .calibration import CalibrationScorer, TemperatureScaler
from .conformal import ConformalPredictor, ConformalScorer
from .mc_dropout import MCDropoutScorer, mutual_information
from .metrics import ClassificationScorer
from .ood import DETECTORS, InDistribution, OODScorer
from .selective import SelectiveScorer, risk_controlling_threshold
from .shifts import shift_accuracy_keys

#: name -> Scorer class built with ``from_config``; a new scorer is one class plus one line
SCORERS: dict[str, type[Scorer]] = {
    "classification": ClassificationScorer,
    "calibration": CalibrationScorer,
    "mc_dropout": MCDropoutScorer,
    "selective": SelectiveScorer,
    "conformal": ConformalScorer,
}


def ood_scorer(config: EvalConfig) -> OODScorer:
    """The OOD scorer with the profile's in-distribution rule."""
    return OODScorer(acquisition_keep=config.acquisition_keep,
                     semantic_keep=config.semantic_keep,
                     acquisition=config.acquisition_detector, semantic=config.semantic_detector)


def evaluate_fold(train: ModelOutputs | None, val: ModelOutputs, test: ModelOutputs, *,
                  ood_sets: dict[str, ModelOutputs], shifted: dict[str, ModelOutputs],
                  config: EvalConfig, graded: dict[str, ModelOutputs] | None = None,
                  batch_keys: dict[str, float] | None = None) -> dict[str, float]:
    """Every scorer in ``SCORERS`` fitted on (train, val) and scored on ``test``; OOD metrics of
    every applicable detector for each of ``ood_sets`` against ``test`` (the held-out fold's
    false-alarm rate too), the in-distribution rule's flagged share on ``graded`` sets; accuracy
    and drop for each of ``shifted`` (keys ``"<shift>_s<k>"``, labelled copies of test images).
    Pass shifted sets in ``ood_sets`` or ``graded`` too to get their detection metrics.
    ``cal_temperature`` is the fold's temperature fitted on ``val``: pass it on to
    ``fit_confidence_artifacts``. ``batch_keys``: the fold's ``batch_shift_keys`` when the
    caller already has them (they depend on the images only, not on the model)."""
    res: dict[str, float] = {}
    for scorer in SCORERS.values():
        res.update(scorer.from_config(config).fit(train, val).score(test))
    if ood_sets or graded:
        res.update(ood_scorer(config).fit(train, val).score_sets(test, ood_sets, graded))
        res.update(batch_keys if batch_keys is not None
                   else batch_shift_keys(fit_batch_test(train, val), test, ood_sets))
    if shifted:
        clean = float((test.probs.argmax(1) == test.labels).mean())
        res.update(shift_accuracy_keys(clean, {k: float((o.probs.argmax(1) == o.labels).mean())
                                               for k, o in shifted.items()}))
    return res


BATCH_SIZE, BATCH_ALPHA, BATCHES_PER_GROUP = 50, 0.01, 4


def fit_batch_test(train: ModelOutputs | None, val: ModelOutputs):
    """The batch shift test (``batch_shift.BatchShiftTest``) on the image statistics of every
    non-test image of the fold (inner train + validation: the most acquisition groups to
    calibrate "a new group of the same lab" on); None without descriptors."""
    from .batch_shift import BatchShiftTest

    parts = [o for o in (train, val) if o is not None and o.descriptors is not None
             and "image_stats" in o.descriptors]
    if not parts:
        return None
    stats = np.concatenate([o.descriptors["image_stats"] for o in parts])
    groups = (np.concatenate([np.asarray(o.groups).astype(str) for o in parts])
              if all(o.groups is not None for o in parts) else None)
    return BatchShiftTest().fit(stats, groups=groups)


def batch_shift_keys(test_batch, test: ModelOutputs, ood_sets: dict[str, ModelOutputs],
                     seed: int = 0) -> dict[str, float]:
    """How the batch test behaves on this fold: ``batch_heldout_false_alarm`` = share of
    batches of ``BATCH_SIZE`` crops from one held-out acquisition group with p < 0.01 (up to
    ``BATCHES_PER_GROUP`` batches per group large enough), ``batch_heldout_batches`` their
    number, and ``batch_<set>_p`` for the first ``BATCH_SIZE`` images of each OOD set."""
    if test_batch is None or test.descriptors is None or test.groups is None:
        return {}
    rng = np.random.default_rng(seed)
    stats, groups = test.descriptors["image_stats"], np.asarray(test.groups)
    p_values = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        for _ in range(min(BATCHES_PER_GROUP, len(members) // BATCH_SIZE)):
            pick = rng.choice(members, BATCH_SIZE, replace=False)
            p_values.append(test_batch.test(stats[pick]).p_value)
    res = {metric_column("batch", "batches", set=HELD_OUT): float(len(p_values)),
           metric_column("batch", "false_alarm", set=HELD_OUT): (
               float(np.mean(np.asarray(p_values) < BATCH_ALPHA)) if p_values else float("nan"))}
    for name, ood in ood_sets.items():
        if ood.descriptors is not None and len(ood) >= BATCH_SIZE:
            res[metric_column("batch", "p", set=name)] = float(
                test_batch.test(ood.descriptors["image_stats"][:BATCH_SIZE]).p_value)
    return res


#: miscoverage of the conformal set ``predict`` reports per crop (class-conditional LAC,
#: calibrated for new acquisition groups: ``conformal.new_group_quantile``)
PREDICT_ALPHA = 0.1

#: why ``decision`` is ``refer``, in the order they are checked ("" for accepted crops)
REFER_REASONS = ("ood", "low_confidence", "fold_disagreement")


@dataclass
class ConfidenceArtifacts:
    """What predict.py needs for one fold's model (picklable). Probabilities are temperature
    scaled; conformal sets and the selective threshold are fitted on those scaled validation
    probabilities. A crop is ``accept`` iff the in-distribution rule keeps it (acquisition AND
    semantic detector) and its calibrated max probability reaches ``confidence_threshold``, the
    lowest threshold whose Clopper-Pearson upper bound on validation risk is <= ``risk_target``
    at confidence 1 - ``risk_delta``; otherwise ``refer`` (to the embryologist) with
    ``refer_reason``. ``batch_test`` judges a whole folder against the validation images."""

    temperature: float
    detector: InDistribution
    conformal: ConformalPredictor
    alpha: float
    confidence_threshold: float
    risk_target: float
    risk_delta: float
    batch_test: object | None = None

    @property
    def detector_name(self) -> str:
        return "+".join(self.detector.names)

    def apply(self, outputs: ModelOutputs) -> pd.DataFrame:
        """One row per image: predicted_class, prob_<slug>, max_prob, mc_mi (NaN without MC),
        ood_score (>= 0 iff in-distribution), in_distribution, conformal_set (class-conditional
        LAC calibrated for new acquisition groups), confident, decision, refer_reason."""
        cal = scaled(outputs, self.temperature)
        probs = cal.probs
        ood_score = self.detector.score(outputs)
        in_dist = ood_score >= self.detector.threshold_
        sets = self.conformal.predict_sets(probs, self.alpha)
        max_prob = probs.max(axis=1)
        confident = max_prob >= self.confidence_threshold
        frame = pd.DataFrame({"predicted_class": np.asarray(CLASSES)[probs.argmax(axis=1)]})
        for k, slug in enumerate(SLUGS):
            frame[f"prob_{slug}"] = probs[:, k]
        frame["max_prob"] = max_prob
        frame["mc_mi"] = (mutual_information(outputs.mc_probs) if outputs.mc_probs is not None
                          else np.nan)
        frame["ood_score"] = ood_score
        frame["in_distribution"] = in_dist
        frame["conformal_set"] = ["|".join(c for c, m in zip(CLASSES, row, strict=True) if m) for row in sets]
        frame["confident"] = confident
        frame["decision"] = np.where(confident & in_dist, "accept", "refer")
        frame["refer_reason"] = np.where(~in_dist, "ood", np.where(~confident, "low_confidence", ""))
        return frame


def fit_confidence_artifacts(train: ModelOutputs | None, val: ModelOutputs, config: EvalConfig,
                             *, alpha: float = PREDICT_ALPHA, temperature: float | None = None,
                             batch_test=None) -> ConfidenceArtifacts:
    """Temperature, the in-distribution rule (``config``'s acquisition and semantic detectors,
    thresholds keeping ``acquisition_keep`` / ``semantic_keep`` of validation), class-conditional conformal LAC at
    ``alpha`` (calibrated for new acquisition groups when validation has groups), the risk-controlling selective threshold and the batch shift test, all fitted on
    this fold's train/val outputs (never on the held-out fold).

    ``temperature``: the fold's already fitted temperature (``evaluate_fold``'s
    ``cal_temperature``, fitted on the same ``val``), so a fold fits T once and its reported
    calibration and its saved model use the same value; None fits it here the same way.
    ``batch_test``: the fold's already fitted ``fit_batch_test`` (model-independent), None
    fits it here."""
    if temperature is None:
        temperature = TemperatureScaler().fit(val.logits, val.labels).temperature_
    cal_val = scaled(val, temperature)
    rule = InDistribution(config.acquisition_keep, config.semantic_keep,
                          config.acquisition_detector, config.semantic_detector).fit(train if train is not None else val, val)
    alphas = tuple(sorted({alpha, *config.conformal_alphas}))
    conformal = ConformalPredictor("lac", alphas, mondrian=True,
                                   new_groups=val.groups is not None).fit(cal_val.probs, val.labels,
                                                                          val.groups)
    correct = cal_val.probs.argmax(1) == val.labels
    _, threshold = risk_controlling_threshold(cal_val.probs.max(1), correct, config.risk_target,
                                              config.risk_delta)
    return ConfidenceArtifacts(temperature=temperature, detector=rule, conformal=conformal,
                               alpha=alpha, confidence_threshold=threshold,
                               risk_target=config.risk_target, risk_delta=config.risk_delta,
                               batch_test=(batch_test if batch_test is not None
                                           else fit_batch_test(train, val)))


__all__ = ["SCORERS", "DETECTORS", "PREDICT_ALPHA", "REFER_REASONS", "ConfidenceArtifacts", "evaluate_fold",
           "fit_confidence_artifacts", "fit_batch_test", "batch_shift_keys", "class_slug"]
