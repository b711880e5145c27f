"""Foreign-lab crops: deterministic, well-formed, and acquired outside every synthetic donor."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import decoded_synthetic

from smids_eval.data.foreign_lab import FOREIGN_LABS, foreign_lab_images

LABS = sorted(FOREIGN_LABS)


def _colour_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: background (per-channel median) chroma and brightness, mean brightness."""
    pixels = images.reshape(len(images), -1, 3).astype(np.float64)
    background = np.median(pixels, axis=1)
    mean = pixels.mean(axis=1)
    return {"bg_chroma": np.ptp(background, axis=1), "bg_brightness": background.mean(axis=1),
            "mean_brightness": mean.mean(axis=1), "mean_chroma": np.ptp(mean, axis=1)}


@pytest.fixture(scope="module")
def synthetic_stats(tmp_path_factory) -> dict[str, np.ndarray]:
    """The default synthetic set's 17 donors (340 images decoded to 32x32), two seeds."""
    sets = [decoded_synthetic(tmp_path_factory.mktemp(f"syn{seed}"), n_images=340, seed=seed)[1]
            for seed in (0, 1)]
    return _colour_stats(np.concatenate(sets))


def test_registry_names_match():
    assert set(FOREIGN_LABS) == {"stained_heads", "grey_phase"}
    assert all(lab.name == name and lab.description for name, lab in FOREIGN_LABS.items())


@pytest.mark.parametrize("lab", LABS)
def test_shape_dtype_and_determinism(lab):
    first = foreign_lab_images(6, 40, seed=3, lab=lab)
    assert first.shape == (6, 40, 40, 3) and first.dtype == np.uint8
    assert np.array_equal(first, foreign_lab_images(6, 40, seed=3, lab=lab))
    assert np.array_equal(first[:4], foreign_lab_images(4, 40, seed=3, lab=lab))  # prefix-stable
    assert not np.array_equal(first, foreign_lab_images(6, 40, seed=4, lab=lab))
    assert len({im.tobytes() for im in first}) == 6  # images differ
    assert first.std() > 5  # not blank


def test_labs_differ_and_bad_arguments_are_refused():
    a, b = (foreign_lab_images(3, 24, seed=0, lab=lab) for lab in LABS)
    assert not np.array_equal(a, b)
    assert foreign_lab_images(0, 24).shape == (0, 24, 24, 3)
    with pytest.raises(ValueError, match="unknown foreign lab 'nope'"):
        foreign_lab_images(2, 24, lab="nope")
    with pytest.raises(ValueError, match="size >= 8"):
        foreign_lab_images(2, 4)


def test_stained_heads_outside_donor_range(synthetic_stats):
    """White, neutral background (every synthetic donor has a tinted smear), bright overall,
    and a strongly coloured stain that covers much of the crop."""
    images = foreign_lab_images(60, 32, seed=0, lab="stained_heads")
    stats = _colour_stats(images)
    assert stats["bg_chroma"].max() < synthetic_stats["bg_chroma"].min()
    assert np.median(stats["bg_brightness"]) > synthetic_stats["bg_brightness"].max()
    assert stats["bg_brightness"].min() > np.percentile(synthetic_stats["bg_brightness"], 95)
    # stain: a large share of pixels is strongly coloured (magnified heads fill the crop)
    pixels = images.reshape(len(images), -1, 3).astype(np.float64)
    stained = np.ptp(pixels, axis=2) > 60
    assert np.median(stained.mean(axis=1)) > 0.1


def test_grey_phase_outside_donor_range(synthetic_stats):
    """Dark and colourless: below every donor in mean brightness and in colour."""
    stats = _colour_stats(foreign_lab_images(60, 32, seed=0, lab="grey_phase"))
    assert stats["mean_brightness"].max() < synthetic_stats["mean_brightness"].min()
    assert stats["mean_chroma"].max() < synthetic_stats["mean_chroma"].min()
    assert stats["bg_chroma"].max() < synthetic_stats["bg_chroma"].min()
