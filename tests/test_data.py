"""Data layer: class aliases, formats, cache, bad-input errors, data report."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from smids_eval import CLASSES
from smids_eval.cli import module_main
from smids_eval.config import DataConfig, Profile, check_profile
from smids_eval.data import cache, canonical_class, load_dataset, load_folder
from smids_eval.data.decode import decode_image
from smids_eval.data.scan import IMAGE_SUFFIXES, folder_files, image_files
from smids_eval.data.synthetic import STYLES
from smids_eval.errors import ConfigError, DataError


@pytest.mark.parametrize("name,expected", [
    ("Normal_Sperm", "Normal_Sperm"), ("normal", "Normal_Sperm"), ("NORMAL SPERM", "Normal_Sperm"),
    ("abnormal", "Abnormal_Sperm"), ("Abnormal-Sperm", "Abnormal_Sperm"),
    ("Non-Sperm", "Non-Sperm"), ("Non_Sperm", "Non-Sperm"), ("non sperm", "Non-Sperm"),
    ("nonsperm", "Non-Sperm"), ("sperm", None), ("debris", None),
])
def test_class_aliases(name, expected):
    assert canonical_class(name) == expected


def test_loads_every_format_and_mode_as_rgb(tiny_folder, tmp_path):
    ds = load_folder(tiny_folder, size=16, cache_dir=tmp_path / "c")
    assert ds.images.shape == (12, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.class_counts() == dict.fromkeys(CLASSES, 4)
    assert ds.paths[0].startswith("normal/")
    assert (ds.original_sizes == [30, 24]).all()
    # the grey (mode L) image became RGB with three equal channels
    grey = ds.images[ds.paths.index("normal/b.bmp")]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_second_load_hits_cache(tiny_folder, tmp_path):
    cache.stats["decoded_images"] = 0
    first = load_folder(tiny_folder, size=16, cache_dir=tmp_path / "c")
    assert cache.stats["decoded_images"] == 12
    second = load_folder(tiny_folder, size=16, cache_dir=tmp_path / "c")
    assert cache.stats["decoded_images"] == 12
    np.testing.assert_array_equal(first.images, second.images)
    load_folder(tiny_folder, size=20, cache_dir=tmp_path / "c")  # another size decodes again
    assert cache.stats["decoded_images"] == 24


def test_changed_content_changes_fingerprint(tiny_folder, tmp_path):
    before = load_folder(tiny_folder, size=16, cache_dir=tmp_path / "c").fingerprint
    shutil.copy(tiny_folder / "normal/a.png", tiny_folder / "normal/z.png")
    after = load_folder(tiny_folder, size=16, cache_dir=tmp_path / "c")
    assert after.fingerprint != before
    assert ["normal/a.png", "normal/z.png"] in after.duplicates


@pytest.mark.parametrize("suffix", sorted(IMAGE_SUFFIXES))
def test_every_accepted_suffix_decodes(tmp_path, suffix):
    """IMAGE_SUFFIXES promises only what decode_image can read (palette, alpha, RGB)."""
    from PIL import Image

    mode = "P" if suffix == ".gif" else "RGBA" if suffix in {".png", ".webp", ".tif", ".tiff"} else "RGB"
    path = tmp_path / f"x{suffix.upper()}"
    Image.new(mode, (30, 20), 120).save(path, format=Image.registered_extensions()[suffix])
    pixels, original = decode_image(path, 8)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8 and original == (30, 20)


def test_folder_files_are_sorted_recursive_and_skip_hidden(tmp_path):
    for rel in ["b/z.png", "a.PNG", "a.txt", ".hidden.png", "Thumbs.db", ".cache/c.png",
                "b/.d/e.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    listed = [p.relative_to(tmp_path).as_posix() for p in folder_files(tmp_path)]
    assert listed == ["a.PNG", "a.txt", "b/z.png"]
    assert [p.name for p in image_files(tmp_path)] == ["a.PNG", "z.png"]


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="data directory not found: .*nowhere"):
        load_folder(tmp_path / "nowhere", size=16)


def test_unknown_class_folder_and_empty_class(tiny_folder):
    (tiny_folder / "sperm_cells").mkdir()
    for p in (tiny_folder / "non_sperm").iterdir():
        p.unlink()
    with pytest.raises(DataError) as err:
        load_folder(tiny_folder, size=16)
    msg = str(err.value)
    assert "unknown class folder" in msg and "sperm_cells" in msg
    assert "without any image" in msg and "non_sperm" in msg


def test_every_bad_file_is_listed_in_one_error(tiny_folder, tmp_path):
    (tiny_folder / "normal/notes.txt").write_text("hello")
    (tiny_folder / "normal/empty.png").write_bytes(b"")
    (tiny_folder / "Abnormal sperm/x.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError) as err:
        load_folder(tiny_folder, size=16, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "notes.txt" in msg and "empty.png" in msg and "zero-byte" in msg
    # corrupt images are found at decode time, after layout problems are fixed
    (tiny_folder / "normal/notes.txt").unlink()
    (tiny_folder / "normal/empty.png").unlink()
    (tiny_folder / "non_sperm/y.bmp").write_bytes(b"BM" + b"\0" * 40)
    with pytest.raises(DataError) as err:
        load_folder(tiny_folder, size=16, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "x.png" in msg and "y.bmp" in msg and "corrupt" in msg
    assert "Traceback" not in msg


def test_missing_class_folder(tiny_folder):
    shutil.rmtree(tiny_folder / "normal")
    with pytest.raises(DataError, match="missing class folder.*Normal_Sperm"):
        load_folder(tiny_folder, size=16)


def test_cache_inside_data_folder_is_refused(tiny_folder):
    with pytest.raises(DataError, match="inside the data folder"):
        load_folder(tiny_folder, size=16, cache_dir=tiny_folder / "cache")


def test_source_order(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SMIDS_DATA_DIR", str(tiny_folder))
    ds = load_dataset(size=8, cache_dir=tmp_path / "c")
    assert ds.source.origin == "SMIDS_DATA_DIR"
    other = tmp_path / "other"
    shutil.copytree(tiny_folder, other)
    ds = load_dataset(other, size=8, cache_dir=tmp_path / "c")
    assert ds.source.origin == "--data-dir" and ds.root == other


def test_synthetic_style_is_validated_and_keys_the_cached_set(tmp_path, monkeypatch):
    """A profile's unknown style fails before any work; each style gets its own cached folder
    (the golden run's "legacy" set never answers for the "lab" default)."""
    with pytest.raises(ConfigError, match=r"synthetic_style = 'nope' is not one of \['lab', "):
        check_profile(Profile(name="x", data=DataConfig(synthetic_style="nope")), "profile x")
    monkeypatch.delenv("SMIDS_DATA_DIR", raising=False)
    sets = {style: load_dataset(size=8, cache_dir=tmp_path, synthetic_images=17,
                                synthetic_style=style) for style in STYLES}
    assert len({ds.root for ds in sets.values()}) == len({ds.fingerprint for ds in sets.values()})
    assert len({ds.root for ds in sets.values()}) == len(STYLES) == 2
    assert all(style in ds.root.name for style, ds in sets.items())


def test_report_cli(tiny_folder, capsys):
    assert module_main("data", ["--report", "--data-dir", str(tiny_folder), "--size", "8"]) == 0
    out = capsys.readouterr().out
    assert "images per class" in out and "Normal_Sperm" in out and "image sizes" in out
    assert module_main("data", ["--report", "--data-dir", str(tiny_folder / "nope")]) == 2
    assert "data directory not found" in capsys.readouterr().err


@pytest.mark.real_data
def test_report_on_real_copy(real_smids, capsys):
    assert module_main("data", ["--report", "--data-dir", str(real_smids), "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "images: 3000" in out
    assert "Normal_Sperm      1021" in out and "Abnormal_Sperm    1005" in out
    assert "exact duplicates" in out


def test_workers_generating_the_synthetic_set_together_share_one_copy(tmp_path):
    """Three processes resolving the synthetic default on one fresh cache: one generates it,
    the others wait for it; none deletes the copy another is reading."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from smids_eval.data.source import "
            "synthetic_root; r = synthetic_root(Path(sys.argv[1]), 60, 0); "
            "print(len(list(r.rglob('*.bmp'))))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [o.strip() for o, _ in outs] == ["60"] * 3
    assert len([d for d in (tmp_path / "synthetic").iterdir() if d.is_dir()]) == 1
