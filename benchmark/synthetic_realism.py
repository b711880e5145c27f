"""Does the synthetic default behave like a lab? (issue 10, item 6)

    python benchmark/synthetic_realism.py [N_IMAGES] [SEED] [STYLE]

Generates the synthetic set (default: 1200 images, seed 0, style "lab") in a temporary folder,
decodes it at 64 px like the data layer and prints

* (a) macro-F1 of a random forest on acquisition statistics alone
  (``image_statistics``) under donor-grouped vs stratified random 5-fold CV, and the gain of
  the random split (target: <= 0.10, donors barely leak the class);
* (b) macro-F1 of the rule "predict the donor's majority class in the training folds" on the
  random split (target: near chance, 1/3; donor identity does not predict the class).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import f1_score
from sklearn.model_selection import GroupKFold, StratifiedKFold

SIZE, FOLDS, GAIN_TARGET = 64, 5, 0.10


def cv_macro_f1(features: np.ndarray, labels: np.ndarray, splits) -> float:
    """Pooled out-of-fold macro-F1 of a random forest over ``splits``."""
    predicted = np.empty_like(labels)
    for train, test in splits:
        forest = RandomForestClassifier(n_estimators=200, random_state=0, n_jobs=1)
        predicted[test] = forest.fit(features[train], labels[train]).predict(features[test])
    return f1_score(labels, predicted, average="macro")


def donor_majority_f1(labels: np.ndarray, donors: np.ndarray, splits) -> float:
    """Macro-F1 of predicting each test image's donor's majority class in the training part."""
    predicted = np.empty_like(labels)
    overall = np.bincount(labels).argmax()
    for train, test in splits:
        table = pd.Series(labels[train]).groupby(donors[train]).agg(
            lambda s: np.bincount(s).argmax())
        predicted[test] = [table.get(d, overall) for d in donors[test]]
    return f1_score(labels, predicted, average="macro")


def main() -> None:
    from smids_eval.data import load_folder
    from smids_eval.data.synthetic import SPEC, generate
    from smids_eval.evaluate.descriptors import image_statistics
    from smids_eval.groups import read_manifest

    n_images = int(sys.argv[1]) if len(sys.argv) > 1 else SPEC.n_images
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    style = sys.argv[3] if len(sys.argv) > 3 else "lab"
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "smids", n_images=n_images, seed=seed, style=style)
        dataset = load_folder(root, SIZE, Path(tmp) / "cache")
        donors = np.asarray(read_manifest(root / SPEC.manifest_name, dataset.paths, root=root))
    labels, features = dataset.labels, image_statistics(dataset.images)
    grouped = list(GroupKFold(FOLDS).split(features, labels, donors))
    random = list(StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(features, labels))
    f1_grouped = cv_macro_f1(features, labels, grouped)
    f1_random = cv_macro_f1(features, labels, random)
    gain = f1_random - f1_grouped
    print(f"synthetic set: {len(labels)} images, style {style!r}, seed {seed}, "
          f"{len(set(donors))} donors, {SIZE} px")
    print(f"(a) RF on image statistics: macro-F1 grouped {f1_grouped:.3f}, random "
          f"{f1_random:.3f}, gain {gain:+.3f} (target <= {GAIN_TARGET:.2f}: "
          f"{'ok' if gain <= GAIN_TARGET else 'TOO HIGH'})")
    print(f"(b) donor's-majority-class rule on the random split: macro-F1 "
          f"{donor_majority_f1(labels, donors, random):.3f} (chance ~ 0.33)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
