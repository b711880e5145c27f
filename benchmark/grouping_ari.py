"""How well inferred acquisition groups recover the true donors of the synthetic set.

    python benchmark/grouping_ari.py [N_IMAGES] [SIZE]

Generates the default synthetic set (17 donors), decodes it like the data layer, infers groups
and prints the adjusted Rand index against the true donors, and against random assignment.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from smids_eval.data import load_dataset
from smids_eval.groups import infer_groups, read_manifest


def main() -> None:
    n_images = int(sys.argv[1]) if len(sys.argv) > 1 else 1200
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    with tempfile.TemporaryDirectory() as cache:
        ds = load_dataset(size=size, cache_dir=cache, synthetic_images=n_images)
        donors = read_manifest(ds.source.manifest, ds.paths, root=ds.root)
        inferred = infer_groups(ds.images, n_groups=17)
        rng = np.random.default_rng(0)
        chance = [adjusted_rand_score(donors, rng.integers(0, 17, len(donors))) for _ in range(100)]
        print(f"synthetic set: {len(ds)} images at {size} px, {len(set(donors))} donors, "
              f"{len(set(inferred))} inferred groups")
        print(f"ARI(inferred, donors) = {adjusted_rand_score(donors, inferred):.4f}")
        print(f"ARI(random 17-way assignment, donors) = mean {np.mean(chance):.4f}, "
              f"max {np.max(chance):.4f} over 100 draws")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
