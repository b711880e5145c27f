"""smids-eval: grouped, cross-validated benchmark of VGG19 variants on SMIDS crops, with
calibration, MC-dropout confidence, out-of-distribution checks and a random-forest head.

The public API (imported lazily, so ``import smids_eval`` stays cheap)::

    from smids_eval import StudyConfig, run_study, Predictor, load_dataset
    result = run_study(StudyConfig(variants=("F.0",), profile="quick"))
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Canonical class order used everywhere (labels are indices into this tuple).
CLASSES = ("Normal_Sperm", "Abnormal_Sperm", "Non-Sperm")

#: public name → module that owns it
_API = {
    "StudyConfig": "study_config",
    "run_study": "study",
    "StudyResult": "study",
    "StudyPlan": "plan",
    "run_benchmark": "benchmark",
    "Predictor": "predict",
    "RunFolder": "run_folder",
    "SavedFold": "run_folder",
    "load_dataset": "data",
    "load_folder": "data",
    "Dataset": "data",
    "resolve_groups": "groups",
    "make_splits": "splits",
    "SplitPlan": "splits",
    "evaluate_fold": "evaluate",
    "fit_confidence_artifacts": "evaluate",
    "ModelOutputs": "outputs",
    "Engine": "engine",
    "load_profile": "config",
    "select_variants": "variants",
}

__all__ = ["CLASSES", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'smids_eval' has no attribute {name!r}")
