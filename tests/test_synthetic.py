"""The synthetic SMIDS-like generator: determinism, layout, manifest and donor effects."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import decoded_synthetic
from PIL import Image
from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from smids_eval import CLASSES
from smids_eval.data.synthetic import SPEC, generate
from smids_eval.errors import ConfigError, DataError

SMALL = {"n_images": 60, "n_donors": 5, "size_range": (24, 40)}


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def spec_set(tmp_path_factory) -> Path:
    """Default donor count and class layout, few tiny images."""
    return generate(tmp_path_factory.mktemp("spec") / "smids", n_images=170, seed=1,
                    size_range=(24, 40))


@pytest.fixture(scope="module")
def medium_set(tmp_path_factory) -> tuple[pd.DataFrame, np.ndarray]:
    """340 images from 17 donors, decoded to 32x32; returns (manifest, images)."""
    return decoded_synthetic(tmp_path_factory.mktemp("medium"), n_images=340, seed=3)


def test_same_seed_gives_identical_bytes(tmp_path):
    first = _file_bytes(generate(tmp_path / "a", seed=7, **SMALL))
    second = _file_bytes(generate(tmp_path / "b", seed=7, **SMALL))
    assert len(first) == SMALL["n_images"] + 1
    assert first == second


def test_different_seed_gives_different_images(tmp_path):
    first = _file_bytes(generate(tmp_path / "a", seed=7, **SMALL))
    second = _file_bytes(generate(tmp_path / "b", seed=8, **SMALL))
    assert not set(first.values()) & set(second.values())  # no image (nor manifest) shared


def test_layout_and_manifest_match_spec(spec_set):
    assert sorted(p.name for p in spec_set.iterdir() if p.is_dir()) == sorted(SPEC.classes)
    manifest = pd.read_csv(spec_set / SPEC.manifest_name)
    assert tuple(manifest.columns) == SPEC.manifest_columns
    on_disk = {p.relative_to(spec_set).as_posix() for p in spec_set.rglob(f"*{SPEC.suffix}")}
    assert set(manifest["path"]) == on_disk and len(manifest) == 170
    assert manifest["donor"].nunique() == SPEC.n_donors == 17
    for path, donor in zip(manifest["path"], manifest["donor"], strict=True):
        match = re.fullmatch(r"([A-Za-z_-]+)/d(\d\d)_\d{5}\.bmp", path)
        assert match and match[1] in CLASSES and donor == f"donor_{match[2]}"


def test_images_are_rgb_bmp_within_size_range(spec_set):
    manifest = pd.read_csv(spec_set / SPEC.manifest_name)
    sizes = []
    for path in manifest["path"]:
        with Image.open(spec_set / path) as image:
            assert (image.format, image.mode) == ("BMP", "RGB")
            sizes.append(image.size)
    sizes = np.array(sizes)
    assert sizes.min() >= 24 and sizes.max() <= 40
    assert len(np.unique(sizes[:, 1])) > 5  # sizes vary
    assert np.all(np.abs(sizes[:, 0] - sizes[:, 1]) <= 0.1 * sizes[:, 1] + 1)  # square-ish


def test_every_class_present_even_for_tiny_sets(tmp_path):
    root = generate(tmp_path / "tiny", n_images=3, n_donors=1, seed=0, size_range=(24, 24))
    assert all(len(list((root / c).glob("*.bmp"))) == 1 for c in CLASSES)


def test_each_donor_has_its_own_colour(medium_set):
    manifest, images = medium_set
    colours = images.reshape(len(images), -1, 3).mean(axis=1)
    donors = manifest["donor"].to_numpy()
    names = np.unique(donors)
    centres = np.stack([colours[donors == d].mean(axis=0) for d in names])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    spread = np.median([colours[donors == d].std(axis=0).mean() for d in names])
    assert gaps.min() > 2 * spread
    nearest = names[np.argmin(np.linalg.norm(colours[:, None] - centres[None], axis=-1), axis=1)]
    assert np.mean(nearest == donors) > 0.8


def test_random_split_overestimates_accuracy_versus_donor_split(medium_set):
    """Mean colour + kNN: donor leakage makes a plain stratified split look better."""
    manifest, images = medium_set
    features = images.reshape(len(images), -1, 3).mean(axis=1)
    labels = manifest["path"].str.split("/").str[0].map(CLASSES.index).to_numpy()
    knn = KNeighborsClassifier(n_neighbors=5)
    plain = cross_val_score(knn, features, labels,
                            cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
    grouped = cross_val_score(knn, features, labels, cv=GroupKFold(5),
                              groups=manifest["donor"]).mean()
    assert plain > grouped + 0.08


def test_existing_empty_folder_is_used_and_nonempty_refused(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    assert (generate(target, seed=0, **SMALL) / SPEC.manifest_name).is_file()
    with pytest.raises(DataError, match=re.escape(str(target))):
        generate(target, seed=0, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left behind


def test_invalid_arguments_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"n_images=3 .*size_range=\(40, 20\)"):
        generate(tmp_path / "x", n_images=3, n_donors=5, size_range=(40, 20))
    assert not (tmp_path / "x").exists()
