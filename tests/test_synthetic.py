"""The synthetic SMIDS-like generator: determinism, layout, manifest, and the lab style's mild,
overlapping donor effects (issue 10 item 6)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import decoded_synthetic
from PIL import Image
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import f1_score
from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from smids_eval import CLASSES
from smids_eval.data.synthetic import SPEC, generate
from smids_eval.errors import ConfigError, DataError
from smids_eval.evaluate.descriptors import image_statistics

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
def lab_set(tmp_path_factory) -> tuple[pd.DataFrame, np.ndarray]:
    """The default set's size and donors (1200 images, 17 donors, seed 0) decoded to 32x32;
    returns (manifest, images)."""
    return decoded_synthetic(tmp_path_factory.mktemp("lab"), n_images=SPEC.n_images, seed=0)


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


def _labels(manifest: pd.DataFrame) -> np.ndarray:
    return manifest["path"].str.split("/").str[0].map(CLASSES.index).to_numpy()


def test_lab_class_mixes_are_near_balanced_and_donors_do_not_predict_the_class(lab_set):
    """Every sizeable donor holds every class at 15-60 %, so predicting an image's donor's
    majority class (training folds of a random split) stays near chance."""
    manifest, _ = lab_set
    labels, donors = _labels(manifest), manifest["donor"].to_numpy()
    shares = pd.crosstab(donors, labels, normalize="index")
    sizeable = pd.Series(donors).value_counts().reindex(shares.index) >= 40
    assert sizeable.sum() >= 10
    assert shares[sizeable].to_numpy().min() > 0.12 and shares[sizeable].to_numpy().max() < 0.62
    assert np.all(np.abs(np.bincount(labels) / len(labels) - 1 / 3) < 0.08)
    predicted = np.empty_like(labels)
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(labels, labels):
        majority = pd.Series(labels[train]).groupby(donors[train]).agg(
            lambda s: np.bincount(s).argmax())
        predicted[test] = majority.reindex(donors[test]).fillna(0).to_numpy()
    assert f1_score(labels, predicted, average="macro") < 0.45


def test_lab_donors_overlap_in_colour(lab_set):
    """Mean and spread of colour identify the donor only loosely (kNN, random 5-fold), where
    the legacy generator's donors are told apart almost perfectly."""
    manifest, images = lab_set
    pixels = images.reshape(len(images), -1, 3).astype(np.float64)
    colour = np.concatenate([pixels.mean(axis=1), pixels.std(axis=1)], axis=1)
    accuracy = cross_val_score(KNeighborsClassifier(n_neighbors=5), colour, manifest["donor"],
                               cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
    assert accuracy < 0.5


def test_random_split_gains_little_from_acquisition_statistics(lab_set):
    """Issue 10 item 6: a random forest on acquisition statistics alone gains <= 0.1 macro-F1
    from a random split over a donor-grouped one (benchmark/synthetic_realism.py, 64 px)."""
    manifest, images = lab_set
    features, labels = image_statistics(images), _labels(manifest)
    forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)
    grouped = cross_val_score(forest, features, labels, cv=GroupKFold(5),
                              groups=manifest["donor"], scoring="f1_macro").mean()
    plain = cross_val_score(forest, features, labels, scoring="f1_macro",
                            cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
    assert grouped > 0.6  # the statistics do see the class (object size and layout)
    assert plain - grouped <= 0.1


def test_legacy_style_keeps_separate_donor_colours(tmp_path):
    """The golden run's generator: donors sit in separate colour slots (nearest donor colour
    centre recovers the donor)."""
    manifest, images = decoded_synthetic(tmp_path, n_images=340, seed=3, style="legacy")
    colours = images.reshape(len(images), -1, 3).mean(axis=1)
    donors = manifest["donor"].to_numpy()
    names = np.unique(donors)
    centres = np.stack([colours[donors == d].mean(axis=0) for d in names])
    nearest = names[np.argmin(np.linalg.norm(colours[:, None] - centres[None], axis=-1), axis=1)]
    assert np.mean(nearest == donors) > 0.8


def test_unknown_style_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"synthetic_style = 'nope'.*\['lab', 'legacy'\]"):
        generate(tmp_path / "x", style="nope", **SMALL)
    assert not (tmp_path / "x").exists()


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
