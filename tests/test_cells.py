"""Same-cell links: shifted and re-sized re-crops of one synthetic field are one unit, other
fields are not, conflicting labels are reported, and no unit is split in any split mode; the
run folder records the copies and re-crops; the labelled sample of real pairs still scores as
recorded and gives the threshold's precision."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFilter

from smids_eval.cells import (
    canvas_side,
    conflicting_units,
    file_hashes,
    labelled_pairs,
    link_precision,
    linked_units,
    load_grey,
    pair_scores,
    same_cell_pairs,
)
from smids_eval.splits import make_splits


def field(seed: int, side: int = 320) -> Image.Image:
    """A stained-smear-like field: pale background, a few cells with tails and debris."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(200, 235, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(14):
        x, y = rng.uniform(20, side - 20, 2)
        a, b = rng.uniform(6, 16, 2)
        colour = tuple(int(v) for v in rng.integers(60, 160, 3))
        draw.ellipse([x - a, y - b, x + a, y + b], fill=colour)
        t = rng.uniform(0, 2 * np.pi)
        draw.line([x, y, x + 40 * np.cos(t), y + 40 * np.sin(t)], fill=colour, width=2)
    for _ in range(40):
        x, y = rng.uniform(0, side, 2)
        draw.point((x, y), fill=tuple(int(v) for v in rng.integers(80, 200, 3)))
    return im.filter(ImageFilter.GaussianBlur(1.0))


def crops(tmp_path):
    """Field 0 cropped four times (shifted 3-9 px, sizes 150-180 px), fields 1-5 once each."""
    paths = []
    windows = [(80, 80, 240, 240), (86, 83, 246, 243), (77, 89, 257, 249), (89, 80, 239, 230)]
    for k, box in enumerate(windows):
        paths.append(tmp_path / f"same_{k}.png")
        field(0).crop(box).save(paths[-1])
    for seed in range(1, 6):
        paths.append(tmp_path / f"other_{seed}.png")
        field(seed).crop((80, 80, 240, 240)).save(paths[-1])
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64))) for p in paths])
    return paths, images


def test_shifted_and_resized_recrops_are_linked_others_not(tmp_path):
    paths, images = crops(tmp_path)
    pairs, scores = same_cell_pairs(paths)
    linked = {tuple(p) for p in pairs.tolist()}
    assert linked == {(i, j) for i in range(4) for j in range(i + 1, 4)}, (linked, scores)
    cells = linked_units(images, paths)
    assert len(set(cells.units[:4])) == 1 and len(set(cells.units)) == 1 + 5
    assert set(cells.links["kind"]) == {"re-crop"}


def test_cross_class_unit_is_reported(tmp_path):
    paths, images = crops(tmp_path)
    units = linked_units(images, paths).units
    labels = np.array([0, 0, 1, 0, 0, 1, 2, 2, 1])  # one re-crop of field 0 labelled otherwise
    (conflict,) = conflicting_units(units, labels)
    assert sorted(conflict.tolist()) == [0, 1, 2, 3]
    assert conflicting_units(units, np.array([0, 0, 0, 0, 0, 1, 2, 2, 1])) == []


def test_no_unit_spans_two_folds_in_any_split_mode():
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 3, n)
    units = rng.integers(0, 120, n)  # many multi-image units
    groups = units % 12              # units nested in groups, as resolve_groups makes them
    for grouped in (True, False):
        plan = make_splits(labels, groups, 5, 3, seed=1, grouped=grouped, units=units)
        for u in np.unique(units):
            assert len(set(plan.outer_fold[units == u])) == 1, (grouped, u)
            for f in range(5):
                inner = plan.inner_fold[units == u, f]
                assert len(set(inner)) == 1, (grouped, u, f)
    # the random split without units would split them: the check is not vacuous
    plain = make_splits(labels, groups, 5, 3, seed=1, grouped=False)
    assert any(len(set(plain.outer_fold[units == u])) > 1 for u in np.unique(units))


def _class_folders(tmp_path):
    """Field 0 re-cropped four times (three filed Normal, one Abnormal: a conflicting unit) and
    fields 1-12 cropped once, spread over the three classes."""
    root = tmp_path / "data"
    classes = ["Normal_Sperm", "Abnormal_Sperm", "Non-Sperm"]
    windows = [(80, 80, 240, 240), (86, 83, 246, 243), (77, 89, 257, 249), (89, 80, 239, 230)]
    for k, box in enumerate(windows):
        folder = root / classes[1 if k == 3 else 0]
        folder.mkdir(parents=True, exist_ok=True)
        field(0).crop(box).save(folder / f"same_{k}.png")
    for seed in range(1, 13):
        folder = root / classes[seed % 3]
        folder.mkdir(parents=True, exist_ok=True)
        field(seed).crop((80, 80, 240, 240)).save(folder / f"other_{seed}.png")
    return root


def test_drop_conflicts_removes_the_conflicting_unit_and_renames_the_run(tmp_path):
    from smids_eval import StudyConfig
    from smids_eval.study import prepare

    root = _class_folders(tmp_path)
    profile = str(Path(__file__).parent / "profiles" / "tiny.toml")
    common = dict(profile=profile, data_dir=str(root), split="random", n_groups=4,
                  out=str(tmp_path / "out"),
                  cache_dir=str(tmp_path / "cache"), progress=False)
    kept = prepare(StudyConfig(**common), write=False)
    dropped = prepare(StudyConfig(drop_conflicts=True, **common), write=False)
    assert len(kept.dataset) == 16 and len(dropped.dataset) == 12
    assert not any(p.split("/")[-1].startswith("same_") for p in dropped.dataset.paths)
    assert dropped.dataset.fingerprint != kept.dataset.fingerprint
    assert dropped.run.root.name != kept.run.root.name and "noconflicts" in dropped.run.root.name
    assert len(dropped.groups) == 12 and len(dropped.plans[0].outer_fold) == 12
    # the scan's file hashes travel with the data set (linked_units does not hash again)
    from smids_eval.cells import file_hashes
    for ds in (kept.dataset, dropped.dataset):
        assert ds.sha256 == file_hashes([root / p for p in ds.paths])


def _prepared_run(tmp_path):
    """A prepared (not trained) run on ``_class_folders`` plus a byte-identical copy of one
    Abnormal_Sperm image filed under Non-Sperm."""
    from smids_eval import StudyConfig
    from smids_eval.study import prepare

    root = _class_folders(tmp_path)
    copy = root / "Non-Sperm" / "copy_of_other_1.png"
    copy.write_bytes((root / "Abnormal_Sperm" / "other_1.png").read_bytes())
    profile = str(Path(__file__).parent / "profiles" / "tiny.toml")
    return prepare(StudyConfig(profile=profile, data_dir=str(root), split="random", n_groups=4,
                               out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                               progress=False))


def test_run_folder_records_byte_identical_copies_and_cross_class_recrops(tmp_path):
    ctx = _prepared_run(tmp_path)
    table = pd.read_csv(ctx.run.same_cell_csv)
    assert len(table) == 4 + 2  # the four re-crops of field 0 and the two byte-identical files
    pair = table[table["path"].str.contains("other_1")]
    assert sorted(pair["path"]) == ["Abnormal_Sperm/other_1.png", "Non-Sperm/copy_of_other_1.png"]
    assert pair["sha256"].nunique() == 1 and set(pair["copies"]) == {2}
    assert set(pair["linked_by"]) == {"identical"} and pair["conflict"].all()
    recrops = table[table["path"].str.contains("same_")]
    assert recrops["unit"].nunique() == 1 and recrops["conflict"].all()
    assert recrops["sha256"].nunique() == 4 and set(recrops["copies"]) == {1}
    assert all("re-crop" in k for k in recrops["linked_by"])
    # the unit column is the run's own (splits.csv names the same units)
    splits = pd.read_csv(ctx.run.splits).merge(table[["path", "unit"]], on="path",
                                               suffixes=("", "_csv"))
    assert len(splits) == len(table) and (splits["unit"] == splits["unit_csv"]).all()


def test_same_cell_links_are_found_once_per_data_set_and_then_loaded(tmp_path, monkeypatch):
    """A second preparation of the same data (a benchmark's twin run, a rerun) loads the stored
    links instead of reading every file again, and gets the same units, table and splits."""
    import smids_eval.cells
    from smids_eval.study import prepare

    first = _prepared_run(tmp_path)

    def relink(*args, **kwargs):
        raise AssertionError("the same data set was linked again")

    monkeypatch.setattr(smids_eval.cells, "same_cell_pairs", relink)
    again = prepare(first.config, write=False)
    pd.testing.assert_frame_equal(again.same_cell, first.same_cell)
    assert np.array_equal(again.plans[0].outer_fold, first.plans[0].outer_fold)
    assert len(again.same_cell) == 6
    # another image size is another entry: near-identical copies are judged on decoded images
    with pytest.raises(AssertionError, match="linked again"):
        prepare(first.config.replace(overrides={"data": {"image_size": 48}}), write=False)


def test_link_precision_counts_the_labelled_pairs_with_an_exact_interval():
    from scipy.stats import beta

    pairs = pd.DataFrame({"score": [0.95, 0.92, 0.91, 0.97, 0.85, 0.82, 0.88, 0.5],
                          "same_cell": ["yes", "yes", "no", "yes", "yes", "no", "unsure", "no"]})
    top, below = link_precision(pairs, threshold=0.9).to_dict("records")
    assert (top["same"], top["labelled"], top["unsure"]) == (3, 4, 0)
    assert (below["same"], below["labelled"], below["unsure"]) == (1, 2, 1)
    assert top["precision"] == 0.75 and top["ci_low"] < 0.75 < top["ci_high"]
    # Clopper-Pearson from its definition: beta quantiles at 2.5% and 97.5%
    assert np.isclose(top["ci_low"], beta.ppf(0.025, 3, 2))
    assert np.isclose(top["ci_high"], beta.ppf(0.975, 4, 1))


def test_labelled_pairs_are_in_the_real_copy_and_score_as_recorded(real_smids):
    files = sorted(p for p in real_smids.rglob("*") if p.suffix.lower() in {".png", ".bmp"})
    by_hash = dict(zip(file_hashes(files), files, strict=True))
    pairs = labelled_pairs()
    assert set(pairs["same_cell"]) <= {"yes", "no", "unsure"}
    assert set(pairs["labelled_by"]) == {"eye"}
    named = sorted(set(pairs["sha256_a"]) | set(pairs["sha256_b"]))
    assert set(named) <= set(by_hash), sorted(set(named) - set(by_hash))  # found by content
    index = {h: k for k, h in enumerate(named)}
    crops = load_grey([by_hash[h] for h in named])
    scores = pair_scores(crops, np.array([[index[a], index[b]] for a, b in
                                          zip(pairs["sha256_a"], pairs["sha256_b"], strict=True)]),
                         side=canvas_side(files))
    assert np.allclose(scores, pairs["score"], atol=1e-3), np.abs(scores - pairs["score"]).max()


def test_report_lists_copies_recrops_and_conflicts_and_skips_them_for_older_runs(tmp_path):
    from smids_eval.report.markdown import Report, copies_and_recrops, data_exploration

    ctx = _prepared_run(tmp_path)
    report = Report(run=ctx.run, dataset=ctx.dataset, config=ctx.run.read_config())
    text = "\n".join(copies_and_recrops(report))
    assert "### Copies and re-crops of one cell" in text
    assert "1 set, 1 of them across two classes" in text
    assert "2 units of 2+ images, holding 6 images" in text and "kept together" in text
    assert "2 units with more than one class" in text
    assert "`Abnormal_Sperm/other_1.png` = `Non-Sperm/copy_of_other_1.png`" in text
    assert "`--drop-conflicts` was not used" in text
    assert "no labelled sample of pairs for this data set" in text
    report.config["drop_conflicts"] = True
    assert "2 units (6 images) are left out" in "\n".join(copies_and_recrops(report))

    (ctx.run.same_cell_csv).unlink()  # a run folder made before the file existed
    ctx.run.figures.mkdir(parents=True, exist_ok=True)
    lines = data_exploration(report)
    assert "Held-out crops per outer fold (repeat 0):" in lines
    assert not any("Copies and re-crops" in line for line in lines)


def test_report_shows_the_threshold_precision_for_the_real_copy(real_smids, tmp_path):
    from types import SimpleNamespace

    from smids_eval.report.markdown import Report, link_threshold
    from smids_eval.run_folder import RunFolder

    files = sorted(p for p in real_smids.rglob("*") if p.suffix.lower() in {".png", ".bmp"})
    dataset = SimpleNamespace(root=real_smids,
                              paths=[p.relative_to(real_smids).as_posix() for p in files])
    text = "\n".join(link_threshold(Report(run=RunFolder(tmp_path), dataset=dataset)))
    for row in link_precision(labelled_pairs()).itertuples():
        assert f"| {row.scores} | {row.same} / {row.labelled} | {row.unsure} |" in text
