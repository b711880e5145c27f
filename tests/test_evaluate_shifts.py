"""Image shifts and far-OOD image sets."""

import numpy as np
import pytest

from smids_eval.errors import DataError
from smids_eval.evaluate.far_ood import far_ood_sets, load_folder
from smids_eval.evaluate.shift_panel import ShiftPanel
from smids_eval.evaluate.shifts import (
    SEVERITIES,
    SHIFTS,
    apply_shift,
    shift_accuracy_keys,
)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    base[:, 8:20, 10:18] = [80, 30, 110]  # a dark "head" so blur has edges to smooth
    return base


def high_freq_energy(x):
    x = x.astype(float)
    return (np.diff(x, axis=1) ** 2).mean() + (np.diff(x, axis=2) ** 2).mean()


def shifted_copies(images, seed):
    """Every set of a panel that holds all ``images``."""
    panel = ShiftPanel.draw(len(images), per_fold=len(images), outer_folds=1,
                            severities=SEVERITIES, seed=seed)
    return {name: panel.copy(images, name) for name in panel.sets}


def test_every_shift_keeps_shape_dtype_and_is_deterministic(images):
    copies = shifted_copies(images, seed=3)
    assert set(copies) == {f"{n}_s{s}" for n in SHIFTS for s in SEVERITIES}
    again = shifted_copies(images, seed=3)
    for key, out in copies.items():
        assert out.shape == images.shape and out.dtype == np.uint8, key
        np.testing.assert_array_equal(out, again[key])
        assert not np.array_equal(out, images), key


def test_severity_is_monotonic(images):
    blur = [high_freq_energy(apply_shift(images, "defocus_blur", s)) for s in SEVERITIES]
    assert high_freq_energy(images) > blur[0] > blur[1] > blur[2]
    for name in ("stain", "gaussian_noise", "jpeg", "rescale", "brightness_contrast"):
        dist = [np.abs(apply_shift(images, name, s).astype(float) - images).mean()
                for s in SEVERITIES]
        assert dist[0] < dist[1] < dist[2], (name, dist)


def test_noise_depends_on_seed_and_bad_input_is_rejected(images):
    assert not np.array_equal(apply_shift(images, "gaussian_noise", 2, seed=0),
                              apply_shift(images, "gaussian_noise", 2, seed=1))
    with pytest.raises(ValueError, match="uint8"):
        apply_shift(images.astype(float), "jpeg", 1)
    with pytest.raises(ValueError, match="severity"):
        apply_shift(images, "jpeg", 4)


def test_shift_accuracy_keys():
    keys = shift_accuracy_keys(0.9, {"jpeg_s2": 0.7})
    assert keys == {"shift_jpeg_s2_accuracy": 0.7,
                    "shift_jpeg_s2_accuracy_drop": pytest.approx(0.2)}


def test_far_ood_sets_shape_dtype_and_seed():
    sets = far_ood_sets(8, 40, seed=1)
    assert set(sets) == {"textures", "natural"}
    for arr in sets.values():
        assert arr.shape == (8, 40, 40, 3) and arr.dtype == np.uint8 and arr.std() > 5
    np.testing.assert_array_equal(sets["natural"], far_ood_sets(8, 40, seed=1)["natural"])


def test_load_folder_skips_unreadable_and_fails_when_none_readable(tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    Image.new("RGB", (50, 30), (200, 10, 10)).save(tmp_path / "sub" / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="broken.jpg"):
        loaded = load_folder(tmp_path, 24)
    assert loaded.images.shape == (1, 24, 24, 3) and loaded.images.dtype == np.uint8
    assert [p.name for p in loaded.paths] == ["a.png"] and "broken.jpg" in loaded.skipped[0]
    (tmp_path / "sub" / "a.png").unlink()
    with pytest.raises(DataError, match="broken.jpg"):
        load_folder(tmp_path, 24)
    with pytest.raises(DataError, match="not a folder"):
        load_folder(tmp_path / "missing", 24)
