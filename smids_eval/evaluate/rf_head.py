"""Random-forest head on frozen VGG19 features, tuned by donor-grouped inner CV, producing
``ModelOutputs`` so the same metrics, calibration and OOD scorers run on it."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold

from ..config import EvalConfig
from ..outputs import ModelOutputs
from .base import N_CLASSES

EPS = 1e-6


class RandomForestHead:
    """``fit(features, labels, groups)`` runs ``GridSearchCV`` (macro-F1) over ``param_grid``
    with ``StratifiedGroupKFold`` on ``groups`` (``StratifiedKFold`` when groups is None or has
    too few donors) and refits the best forest on all data. Without ``param_grid`` the grid is
    ``EvalConfig().rf_grid()`` (the config owns the defaults). Learned: ``best_params_``,
    ``best_score_``, ``forest_``."""

    def __init__(self, param_grid: dict | None = None, inner_folds: int = 2, n_jobs: int = 1,
                 random_state: int = 0):
        self.param_grid = param_grid
        self.inner_folds = inner_folds
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, features: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None
            ) -> RandomForestHead:
        x, y = np.asarray(features, dtype=np.float32), np.asarray(labels)
        if groups is not None and len(np.unique(groups)) >= self.inner_folds:
            cv = StratifiedGroupKFold(self.inner_folds, shuffle=True, random_state=self.random_state)
        else:
            cv, groups = StratifiedKFold(self.inner_folds, shuffle=True,
                                         random_state=self.random_state), None
        search = GridSearchCV(
            RandomForestClassifier(random_state=self.random_state, n_jobs=self.n_jobs),
            self.param_grid or EvalConfig().rf_grid(), scoring="f1_macro", cv=cv, n_jobs=1, refit=True,
            error_score=np.nan)
        search.fit(x, y, groups=groups)
        self.best_params_ = search.best_params_
        self.best_score_ = float(search.best_score_)
        self.forest_ = search.best_estimator_
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, C) in ``CLASSES`` order; classes unseen in training get probability 0."""
        proba = self.forest_.predict_proba(np.asarray(features, dtype=np.float32))
        out = np.zeros((len(proba), N_CLASSES))
        out[:, self.forest_.classes_.astype(int)] = proba
        return out

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.predict_proba(features).argmax(axis=1)

    def outputs(self, features: np.ndarray, labels=None, groups=None) -> ModelOutputs:
        """ModelOutputs with logits = log(prob + eps), the input features as penultimate
        features and no MC samples."""
        return ModelOutputs(logits=np.log(self.predict_proba(features) + EPS),
                            features=np.asarray(features), labels=labels, groups=groups)
