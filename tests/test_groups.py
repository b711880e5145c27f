"""Donor groups: manifest reading and validation, inferred acquisition groups."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import decoded_synthetic
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from smids_eval.errors import DataError
from smids_eval.groups import (
    GROUPING_SOURCES,
    AcquisitionGrouper,
    infer_groups,
    merge_groups,
    near_duplicate_pairs,
    read_manifest,
    rgb_to_lab,
)

PATHS = ["Normal_Sperm/a.bmp", "Abnormal_Sperm/b.bmp", "Non-Sperm/c.bmp"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """340 synthetic images from 17 donors decoded to 32x32; returns (images, donors). The
    legacy style: donors in separate colour slots, so there are acquisition groups to recover
    (the lab default's donors overlap on purpose)."""
    manifest, images = decoded_synthetic(tmp_path_factory.mktemp("groups"), n_images=340, seed=5,
                                         style="legacy")
    return images, manifest["donor"].to_numpy()


def _write(tmp_path, text: str, name: str = "donors.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- manifest

def test_manifest_is_aligned_to_paths_and_accepts_backslashes(tmp_path):
    csv = _write(tmp_path, "path,donor\nNon-Sperm\\c.bmp,donor_2\n"
                           "./Normal_Sperm/a.bmp,donor_1\nAbnormal_Sperm/b.bmp, donor_1\n\n")
    assert read_manifest(csv, PATHS).tolist() == ["donor_1", "donor_1", "donor_2"]
    assert GROUPING_SOURCES == ("manifest", "inferred")


def test_absolute_manifest_paths_are_made_relative_to_root(tmp_path):
    rows = "".join(f"{tmp_path / p},d{i}\n" for i, p in enumerate(PATHS))
    csv = _write(tmp_path, "path,donor\n" + rows)
    assert read_manifest(csv, PATHS, root=tmp_path).tolist() == ["d0", "d1", "d2"]


def test_manifest_mismatches_are_all_named_in_one_error(tmp_path):
    csv = _write(tmp_path, "path,donor\nNormal_Sperm/a.bmp,d1\nNormal_Sperm/gone.bmp,d1\n"
                           "Abnormal_Sperm/b.bmp,d2\nAbnormal_Sperm/b.bmp,d3\n")
    with pytest.raises(DataError) as error:
        read_manifest(csv, PATHS)
    message = str(error.value)
    assert "line 3: Normal_Sperm/gone.bmp" in message            # row for a missing file
    assert "Non-Sperm/c.bmp" in message                          # file without a row
    assert "line 5: duplicate row for Abnormal_Sperm/b.bmp (first on line 4)" in message
    assert str(csv) in message and "inferred" in message         # says what to do


@pytest.mark.parametrize("text, expected", [
    ("file,donor\nNormal_Sperm/a.bmp,d1\n", "header is ['file', 'donor']"),
    ("", "header is missing"),
    ('path,donor\n"Normal_Sperm/a.bmp,d1\n', "not a readable UTF-8 CSV"),
    ("path,donor\nNormal_Sperm/a.bmp,d1,extra\nAbnormal_Sperm/b.bmp,\n",
     "line 2: ['Normal_Sperm/a.bmp', 'd1', 'extra']"),
])
def test_malformed_manifest_raises_data_error(tmp_path, text, expected):
    csv = _write(tmp_path, text)
    with pytest.raises(DataError, match=re.escape(expected)):
        read_manifest(csv, PATHS)


def test_non_utf8_and_missing_manifest_raise_data_error(tmp_path):
    csv = tmp_path / "donors.csv"
    csv.write_bytes(b"path,donor\nNormal_Sperm/\xff.bmp,d1\n")
    with pytest.raises(DataError, match="UTF-8"):
        read_manifest(csv, PATHS)
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "absent.csv", PATHS)


def test_long_problem_lists_are_cut_with_a_count(tmp_path):
    paths = [f"Normal_Sperm/{i:03d}.bmp" for i in range(40)]
    csv = _write(tmp_path, "path,donor\n" + "".join(f"{p},d\n" for p in paths[:5]))
    with pytest.raises(DataError) as error:
        read_manifest(csv, paths)
    message = str(error.value)
    assert "35 image(s) without a row" in message and "and 10 more" in message
    assert "Normal_Sperm/029.bmp" in message and "Normal_Sperm/030.bmp" not in message


# ----------------------------------------------------------------------------- inferred groups

def test_inferred_groups_recover_donors_far_better_than_chance(synthetic):
    images, donors = synthetic
    groups = infer_groups(images, n_groups=17, seed=0)
    assert groups.shape == (len(images),) and set(groups) == set(range(groups.max() + 1))
    chance = max(adjusted_rand_score(donors, np.random.default_rng(s).integers(0, 17, len(donors)))
                 for s in range(5))
    assert adjusted_rand_score(donors, groups) > 0.4 > chance + 0.3


def test_inferred_groups_do_not_depend_on_image_order(synthetic):
    images, _ = synthetic
    order = np.random.default_rng(0).permutation(len(images))
    groups, shuffled = infer_groups(images), infer_groups(images[order])
    assert adjusted_rand_score(groups[order], shuffled) == 1.0


def _recoloured(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Same grey image, mean colour moved towards ``target`` (a colour-balance change)."""
    shift = target.reshape(-1, 3).mean(0) - image.reshape(-1, 3).mean(0)
    shift -= shift @ np.array([0.299, 0.587, 0.114])  # keep luminance
    return np.clip(np.rint(image + shift), 0, 255).astype(np.uint8)


def test_duplicates_are_forced_into_one_group(synthetic):
    images, _ = synthetic
    apart = AcquisitionGrouper(phash_threshold=-1).fit(images).labels_  # no duplicate merging
    a, b = 0, int(np.flatnonzero(apart != apart[0])[0])
    recoloured = _recoloured(images[a], images[b])
    extended = np.concatenate([images, images[a:a + 1], recoloured[None]])
    unmerged = AcquisitionGrouper(phash_threshold=-1).fit(extended).labels_
    assert unmerged[-1] != unmerged[a]  # the colour change alone moves it to another cluster
    grouper = AcquisitionGrouper().fit(extended)
    n = len(images)
    assert grouper.labels_[a] == grouper.labels_[n] == grouper.labels_[n + 1]
    assert {(a, n), (a, n + 1), (n, n + 1)} <= set(map(tuple, grouper.duplicate_pairs_))
    # the duplicates joined one group without chaining the two clusters they came from
    assert grouper.n_groups_ == len(set(unmerged))
    assert len(set(grouper.labels_[:n][apart == apart[b]])) == 1


def test_near_duplicates_found_without_false_pairs(synthetic):
    images, _ = synthetic
    assert len(near_duplicate_pairs(images)) == 0  # distinct synthetic crops
    rng = np.random.default_rng(0)
    noisy = np.clip(images[7] + rng.normal(0, 3, images[7].shape), 0, 255).astype(np.uint8)
    rescaled = np.asarray(Image.fromarray(images[9]).resize((41, 41)).resize((32, 32)))
    pairs = near_duplicate_pairs(np.stack([images[7], images[9], images[11], noisy, rescaled]))
    assert sorted(map(tuple, pairs)) == [(0, 3), (1, 4)]


def test_rgb_to_lab_matches_scikit_image():
    color = pytest.importorskip("skimage.color")
    rgb = np.random.default_rng(0).random((50, 3))
    np.testing.assert_allclose(rgb_to_lab(rgb), color.rgb2lab(rgb[None])[0], atol=0.05)


def test_merge_groups_unions_chains_and_relabels_in_order():
    labels = np.array([5, 5, 2, 9, 7, 2, 0])
    merged = merge_groups(labels, np.array([[0, 3], [3, 4]]))  # 5-9 and 9-7: one chain
    np.testing.assert_array_equal(merged, [0, 0, 1, 0, 0, 1, 2])


def test_grouper_rejects_wrong_image_arrays():
    with pytest.raises(ValueError, match="uint8"):
        infer_groups(np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(4, 8, 8\)"):
        infer_groups(np.zeros((4, 8, 8), dtype=np.uint8))
