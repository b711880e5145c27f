"""The markdown report and its figures on one real tiny study run (and a stripped copy of it)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from smids_eval import StudyConfig, run_study
from smids_eval.cli import module_main
from smids_eval.metric_names import metric_name, parts_frame
from smids_eval.report import figures as fg
from smids_eval.report.gradcam import grad_cam, load_fold_model, model_input
from smids_eval.report.leaderboard import summarise
from smids_eval.report.markdown import (
    GRADCAM_RANDOM_WARNING,
    SECTIONS,
    STAIN_HOLD_DROP,
    Report,
    build_report,
    by_group,
    run_dataset,
    stain_sentence,
)
from smids_eval.run_folder import RunFolder

TINY = str(Path(__file__).parent / "profiles" / "tiny.toml")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STRIPPED = ("MC-dropout", "Out-of-distribution detection", "Confidence index by acquisition group",
            "Accuracy under distribution shift",
            "Neural head vs random-forest head", "Most confident errors", "Grad-CAM",
            "Grouped vs random split", "Throughput")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """F.1 (RGB, dropout, trains block 5) and A.0 (grey, no dropout), specified settings only."""
    out, cache = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("cache")
    run = run_study(StudyConfig(variants=("F.1", "A.0"), profile=TINY, settings=("specified",),
                                out=str(out), cache_dir=str(cache), progress=False,
                                seed=1)).run.root
    return run, run_dataset(run, cache_dir=cache)


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def figure_links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def assert_png(path: Path) -> None:
    """A valid PNG no side of which exceeds the report's pixel limit."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert max(im.size) <= fg.MAX_PX, (path.name, im.size)


def make_random_split_sibling(run: Path) -> Path:
    """A sibling '<run>-random-split' folder whose folds are this run's, made 0.1 more accurate."""
    sibling = run.with_name(run.name + "-random-split")
    sibling.mkdir(exist_ok=True)
    folds = pd.read_csv(RunFolder(run).folds_csv)
    folds["cls_accuracy"] = folds["cls_accuracy"] + 0.1
    folds.to_csv(RunFolder(sibling).folds_csv, index=False)
    return sibling


def make_sensitivity_sibling(run: Path, n_groups: int = 3) -> Path:
    """A sibling '<run>-groupsN' folder: this run's folds, its images in ``n_groups`` groups."""
    sibling = run.with_name(f"{run.name}-groups{n_groups}")
    sibling.mkdir(exist_ok=True)
    pd.read_csv(RunFolder(run).folds_csv).to_csv(RunFolder(sibling).folds_csv, index=False)
    splits = pd.read_csv(run / "splits.csv")
    splits["group"] = [f"inferred_{k % n_groups:02d}" for k in range(len(splits))]
    splits.to_csv(sibling / "splits.csv", index=False)
    return sibling


def test_full_report_has_every_section_and_valid_figures(study, tmp_path):
    run, dataset = study
    make_random_split_sibling(run)
    make_sensitivity_sibling(run)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"benchmarks": [
        {"name": "test_throughput[F.1]", "stats": {"mean": 0.0125},
         "extra_info": {"images_per_s": 80.0}}]}))
    text = build_report(run, dataset=dataset, throughput_json=bench).read_text()
    found = sections(text)
    assert list(found) == [title for title, _ in SECTIONS]
    assert "not available in this run" not in text.lower()
    assert "section failed" not in text
    assert "random initialisation, NOT ImageNet-pretrained" in found["Provenance"]
    header = next(line for line in found["Leaderboard"].splitlines() if line.startswith("| variant"))
    assert header.split("|")[4].strip() == "recall abnormal sperm"
    assert "Variants without dropout (no MC-dropout): A.0." in found["MC-dropout"]
    assert "test_throughput[F.1]" in found["Throughput"] and "12.500" in found["Throughput"]
    assert re.search(r"\| accuracy \|.*\| 0\.100 \|", found["Grouped vs random split"])
    ood = found["Out-of-distribution detection"]
    assert "Tier 1, new acquisition groups" in ood and "per fold:" in ood
    assert "| foreign lab | lab_stained_heads |" in ood and "A folder judged as a batch" in ood
    by_group_text = found["Confidence index by acquisition group"]
    assert "| group | held-out crops | called out (false alarm) |" in by_group_text
    assert "sel_val_thr" not in found["Selective prediction"]  # named for readers, not columns
    assert "Normal_Sperm (P / R / F1)" in found["Per-class recall"]
    data = found["Data exploration"]  # the run folder's same_cell.csv, the synthetic files
    assert "### Copies and re-crops of one cell" in data and "kept together" in data
    assert "no labelled sample of pairs for this data set" in data
    assert "computed on each held-out fold and averaged over folds" in found["Calibration"]
    assert GRADCAM_RANDOM_WARNING in found["Grad-CAM"]  # the tiny run's weights are random
    stain = next(line for line in found["Accuracy under distribution shift"].splitlines()
                 if line.startswith("**Under stain change**"))
    assert re.search(r"(F\.1|A\.0)(\+RF)? \[(specified|tuned)\]", stain), stain
    links = figure_links(text)
    expected = {"label_distribution", "image_sizes", "leaderboard",
                "confusion_matrices", "training_curves", "reliability", "risk_coverage",
                "ood_auroc", "shift_accuracy", "rf_vs_neural", "confident_errors", "gradcam",
                "grouped_vs_random"}
    assert {Path(link).stem for link in links} == expected
    for link in links:
        assert_png(run / link)
    assert sorted(p.name for p in (run / "figures").iterdir()) == sorted(f"{s}.png" for s in expected)


def test_rebuilt_models_reproduce_saved_predictions_and_gradcam(study):
    run, dataset = study
    index = {p: i for i, p in enumerate(dataset.paths)}
    for variant, channels in (("F.1", 3), ("A.0", 1)):
        model, v = load_fold_model(run / "models" / variant / "r0-fold0-specified.pt", init_seed=1)
        preds = pd.read_csv(run / "predictions" / variant / "r0-fold0-specified.csv.gz")
        x = model_input(dataset.images[[index[p] for p in preds["path"]]], v.channels)
        assert x.shape[1] == channels
        with torch.no_grad():
            probs = torch.softmax(model(x), 1).numpy()
        saved = preds[[c for c in preds if c.startswith("prob_")]].to_numpy()
        np.testing.assert_allclose(probs, saved, atol=2e-3)
        cams, cam_probs = grad_cam(model, x[:5])
        assert cams.shape == (5, dataset.size, dataset.size)
        assert cams.min() >= 0 and np.allclose(cams.reshape(5, -1).max(1)[cams.reshape(5, -1).max(1) > 0], 1)
        np.testing.assert_allclose(cam_probs, probs[:5], atol=1e-5)


def test_stripped_run_still_builds_and_says_not_available(study, tmp_path):
    """An older, stripped run folder: fewer arms and families, its wide table a plain folds.csv."""
    run, _ = study
    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("models", "predictions", "figures",
                                                             "report.md"))
    folds = pd.read_csv(RunFolder(copy).folds_csv)
    folds = folds[~folds["variant"].str.endswith("+RF")]
    folds = folds[[c for c in folds if not c.startswith(("mc_", "ood_", "shift_"))]]
    RunFolder(copy).folds_csv.unlink()
    folds.to_csv(copy / "folds.csv", index=False)
    metrics = pd.read_csv(copy / "metrics.csv.gz")
    metrics = metrics[~metrics["variant"].str.endswith("+RF")
                      & ~metrics["family"].isin(["mc_dropout", "ood", "shift"])]
    metrics.to_csv(copy / "metrics.csv.gz", index=False)
    _, parts = RunFolder(run).tidy()
    summarise(folds, parts).to_csv(copy / "leaderboard.csv", index=False)
    text = build_report(copy).read_text()
    found = sections(text)
    assert list(found) == [title for title, _ in SECTIONS]
    for title in STRIPPED:
        assert "not available in this run" in found[title].lower(), title
    assert "section failed" not in text
    for link in figure_links(text):
        assert_png(copy / link)


def test_cli(study, capsys):
    run, _ = study
    assert module_main("report", [str(run), "--no-images"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.md")
    assert module_main("report", [str(run.parent / "missing")]) == 2
    with pytest.raises(SystemExit) as exc:
        module_main("report", ["--help"])
    assert exc.value.code == 0


def test_cost_is_the_studys_and_after_a_benchmark_the_whole_jobs_beside_its_main_study(
        study, tmp_path):
    """A study's report labels its cost the study's. The benchmark times stages after its report
    (twins, throughput, the report itself) in the main study's timer: its timings.json is then the
    whole job's, and the report's cost section, re-written, shows that whole with the main
    study's figures labelled as such; the rest of the report stays as written."""
    from smids_eval.report.markdown import render, rewrite_cost
    from smids_eval.timing import LATER_STAGES, RunCost, StageTimer, benchmark_record

    run = Path(shutil.copytree(study[0], tmp_path / study[0].name))
    text = build_report(run).read_text()
    own = sections(text)["Cost of this run"]
    assert "**wall time of the study**" in own and "**normalised cost of the study" in own
    assert "benchmark" not in own and "main study" not in own
    now = [0.0]
    timer = StageTimer(lambda: now[0])
    cost = RunCost(timer, peak_gflops=350.0, device="cpu",
                   plan=RunFolder(run).read_timings()["plan"])
    for name, seconds in (("prepare", 10.0), ("final_fits", 1400.0)):
        with timer.stage(name):
            now[0] += seconds
    main = cost.record()                        # what the main study writes at its end
    for name, seconds in zip(LATER_STAGES, (200.0, 50.0, 60.0, 40.0), strict=True):
        with timer.stage(name):
            now[0] += seconds
    RunFolder(run).write_timings(benchmark_record(cost.record(), main, end_peak_gflops=612.34))
    assert rewrite_cost(run) == RunFolder(run).report
    after = RunFolder(run).report.read_text()
    head = text.split("## Cost of this run")[0]
    assert after.startswith(head) and after == render(Report.load(run))
    whole = sections(after)["Cost of this run"]
    assert ("**wall time of the whole benchmark**: 29.3 min (1760 s): the main study, then "
            "random_split, sensitivity, throughput, report") in whole
    assert "(wall × min(peak, 700) / 700 GFLOP/s)**: 880.0 s (target ≤ 1800.0 s)" in whole
    assert "**main study**: 23.5 min (1410 s) wall, normalised 705.0 s" in whole
    assert "**bf16 matmul peak at the start**: 350.0 GFLOP/s; at the end 612.3 GFLOP/s" in whole
    rows = [line for line in whole.splitlines() if line.startswith("| main study")
            or line.startswith("| after the main study")]
    assert [row.split("|")[1:3] for row in rows] == [
        [" main study ", " final_fits "], [" main study ", " prepare "],
        [" after the main study ", " random_split "], [" after the main study ", " throughput "],
        [" after the main study ", " sensitivity "], [" after the main study ", " report "]]


def test_at_a_glance_numbers_recompute_from_the_fold_rows(study, capsys):
    from smids_eval.report.glance import glance_facts
    from smids_eval.report.markdown import Report

    run, _ = study
    make_random_split_sibling(run)
    report = Report.load(run)
    facts = glance_facts(report)
    folds = pd.read_csv(RunFolder(run).folds_csv)
    neural = folds[~folds["variant"].str.endswith("+RF")]
    means = neural.groupby(["variant", "setting"])["cls_macro_f1"].mean()
    assert facts["best"] == means.idxmax()
    rows = folds[(folds.variant == facts["best"][0]) & (folds.setting == facts["best"][1])]
    assert facts["macro_f1"].startswith(f"{rows['cls_macro_f1'].mean():.3f}")
    assert facts["false_alarm"] == pytest.approx(rows["ood_heldout_in_distribution_flagged"].mean())
    assert facts["decided"] == int(rows["sel_val_thr_accepted_msp"].fillna(0).sum())
    assert facts["optimism"][1] == pytest.approx(0.0, abs=1e-12)  # the sibling copies the folds
    # the terminal block is the same text as the report's first section
    assert module_main("report", [str(run), "--summary"]) == 0
    printed = capsys.readouterr().out
    assert "At a glance:" in printed and "Limits of this run:" in printed
    assert "NOT ImageNet-pretrained" in printed and "inferred acquisition groups" not in printed


def test_intervals_of_proportions_stay_inside_0_1():
    folds = pd.DataFrame({"variant": "F.0", "setting": "tuned", "repeat": 0, "fold": range(3),
                          "n_test": 100, "n_fit": 300,
                          "cls_recall_abnormal_sperm": [0.0, 1.0, 0.9],
                          "cal_temperature": [0.5, 3.0, 9.0]})
    row = summarise(folds, parts_frame([metric_name("classification", "recall",
                                                    cls="abnormal_sperm"),
                                        metric_name("calibration", "temperature")])).iloc[0]
    assert row["cls_recall_abnormal_sperm_ci95_low"] == 0.0
    assert row["cls_recall_abnormal_sperm_ci95_high"] == 1.0
    assert row["cal_temperature_ci95_low"] < 0.5  # not a proportion: not clipped


def test_reliability_prints_the_calibration_tables_ece(study):
    """The figure's ECE is the table's statistic: per-fold ECE averaged over folds."""
    run, _ = study
    report = Report.load(run)
    for arm in report.top_arms(with_preds=True):
        rows = report.folds[(report.folds["variant"] == arm[0])
                            & (report.folds["setting"] == arm[1])]
        raw, scaled = fg.fold_mean_ece(report.arm_preds(*arm), report.folds)
        assert raw == pytest.approx(rows["cal_ece"].mean(), abs=1e-6), arm
        assert scaled == pytest.approx(rows["cal_ece_ts"].mean(), abs=1e-5), arm


def test_save_shrinks_a_large_figure_under_the_pixel_limit(tmp_path):
    fig, ax = fg._subplots(figsize=(40, 12))
    ax.plot([0, 1], [0, 1])
    path = fg.save(fig, tmp_path / "wide.png")
    with Image.open(path) as im:
        width, height = im.size
    assert max(width, height) <= fg.MAX_PX
    assert width > 0.9 * fg.MAX_PX and 2.5 < width / height < 4.0  # shrunk, not cropped


def test_top_arms_skip_alias_duplicates(tmp_path):
    board = pd.DataFrame({"variant": ["F.2", "F.0", "A.0", "A.0+RF", "F.0"],
                          "setting": ["tuned", "tuned", "tuned", "tuned", "specified"],
                          "aliases": [np.nan, "F.2|F.3", np.nan, np.nan, np.nan],
                          "cls_macro_f1_mean": [0.70, 0.80, 0.75, 0.60, 0.65]})
    report = Report(run=RunFolder(tmp_path), board=board)
    assert report.top_arms() == [("F.0", "tuned"), ("A.0", "tuned"), ("F.0", "specified"),
                                 ("A.0+RF", "tuned")]
    assert report.top_arms(2, with_rf=False) == [("F.0", "tuned"), ("A.0", "tuned")]


def test_stain_sentence_names_the_arms_that_hold():
    rows = []
    for variant, clean, strongest in (("A.0", 0.80, 0.78), ("B.0", 0.80, 0.50)):
        for shift in ("stain", "hed_stain", "jpeg"):
            rows += [{"variant": variant, "setting": "tuned", "shift": shift, "severity": 0,
                      "accuracy": clean},
                     {"variant": variant, "setting": "tuned", "shift": shift, "severity": 3,
                      "accuracy": strongest if shift == "stain" else clean - 0.4}]
    text = stain_sentence(pd.DataFrame(rows))
    assert f"at most {STAIN_HOLD_DROP:.2f} below" in text
    assert "under stain, A.0 [tuned] hold" in text
    assert "under hed_stain, none holds (smallest loss: " in text
    assert "jpeg" not in text and "B.0 [tuned] hold" not in text
    no_stain = pd.DataFrame(rows)
    assert "no stain shift" in stain_sentence(no_stain[no_stain["shift"] == "jpeg"])


PUBLISHED = """
[[result]]
label = "Paper A"
citation = "A, B & C, J. Test 1:1"
year = 2020
model = "some CNN"
metric = "accuracy"
value = 91.25
split = "random"
source_note = "abstract, table 2"

[[result]]
label = "Paper B"
citation = "D, J. Test 2:2"
year = 2022
model = "another CNN"
metric = "macro_f1"
split = "unspecified"
source_note = "full text not read"
"""


def test_published_results_sit_beside_this_run_and_are_not_comparable(study, tmp_path):
    """The section renders the TOML's rows (value, split) beside this run's best arm and its
    random-split twin; the shipped file names a split protocol and a source for every entry."""
    from smids_eval.errors import ConfigError
    from smids_eval.report.markdown import Report, published
    from smids_eval.report.published import SPLITS, load_published

    run, _ = study
    shipped = load_published()
    assert shipped and all(e["split"] in SPLITS and e["source_note"] for e in shipped)
    default = "\n".join(published(Report.load(run)))
    for e in shipped:
        row = next(line for line in default.splitlines() if line.startswith(f"| {e['label']} |"))
        assert f"| {e['split']} |" in row and f"{e['value']:g}" in row
    toml = tmp_path / "published.toml"
    toml.write_text(PUBLISHED)
    sibling = make_random_split_sibling(run)
    text = "\n".join(published(Report.load(run, random_split_run=sibling), toml))
    assert "not comparable" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "| random | 91.25 |  |" in rows["Paper A"]
    assert "| unspecified |  | value not verified offline |" in rows["Paper B"]
    folds = pd.read_csv(RunFolder(run).folds_csv)
    best = Report.load(run).best_arm()
    arm = folds[(folds.variant == best[0]) & (folds.setting == best[1])]
    assert f"| {100 * arm['cls_accuracy'].mean():.1f} ± " in rows["this run, best arm"]
    twin = folds[(folds.variant == best[0]) & (folds.setting == best[1])]["cls_accuracy"] + 0.1
    assert f"| {100 * twin.mean():.1f} ± " in text  # the twin's row (accuracy + 0.1 here)
    toml.write_text(PUBLISHED.replace('"unspecified"', '"grouped"'))
    with pytest.raises(ConfigError, match="split 'grouped'"):
        load_published(toml)


def test_at_a_glance_numbers_equal_the_ones_recomputed_from_metrics_csv(study):
    from smids_eval.report.glance import glance_facts
    from smids_eval.report.markdown import Report

    run, _ = study
    facts = glance_facts(Report.load(run))
    m = pd.read_csv(run / "metrics.csv.gz")
    neural = m[~m["variant"].str.endswith("+RF")]
    f1 = neural[neural["metric"] == "macro_f1"].groupby(["variant", "setting"])["value"].mean()
    assert facts["best"] == f1.idxmax()
    arm = m[(m["variant"] == facts["best"][0]) & (m["setting"] == facts["best"][1])]

    def mean(**parts) -> float:
        rows = arm
        for k, v in parts.items():
            rows = rows[rows[k].fillna("") == v]
        assert len(rows) == arm["fold"].nunique() * arm["repeat"].nunique(), parts
        return rows["value"].mean()

    assert facts["macro_f1"].startswith(f"{f1.max():.3f}")
    assert facts["abnormal_recall"].startswith(
        f"{mean(family='classification', metric='recall_abnormal_sperm'):.3f}")
    assert facts["false_alarm"] == pytest.approx(
        mean(family="ood", set="test", method="in_distribution", metric="flagged"))
    far = [mean(family="ood", set=s, method="in_distribution", metric="flagged")
           for s in ("textures", "natural") if (arm["set"] == s).any()]
    assert far and facts["tier:far OOD (noise, textures, photos)"] == pytest.approx(np.mean(far))
    # the selected pipeline: per fold, the arm with the best inner-CV score, scored outside
    folds = pd.read_csv(RunFolder(run).folds_csv).dropna(subset=["tune_best_inner_macro_f1"])
    picked = folds.loc[folds.groupby(["repeat", "fold"])["tune_best_inner_macro_f1"].idxmax()]
    assert facts["selected"]["mean"] == pytest.approx(picked["cls_macro_f1"].mean())
    from smids_eval.report.markdown import summary_text

    assert f"Selected pipeline** (unbiased): macro-F1 {facts['selected']['mean']:.3f}" in \
        summary_text(run)


def test_ood_and_shift_tables_are_queries_on_metrics_csv_matching_folds_csv(study):
    from smids_eval.metric_names import column
    from smids_eval.report import figures as fg

    run, _ = study
    folds, m = pd.read_csv(RunFolder(run).folds_csv), pd.read_csv(run / "metrics.csv.gz")
    part = m[(m["variant"] == "F.1") & (m["setting"] == "specified")]
    rows = folds[(folds["variant"] == "F.1") & (folds["setting"] == "specified")]
    for metric in ("auroc", "fpr95", "flagged"):
        table = fg.ood_table(part, metric)
        assert table.index.name == "set" and table.columns.name == "detector"
        assert table.notna().sum().sum() > 5
        for (name, det), value in table.stack().items():
            assert value == pytest.approx(rows[column("ood", name, det, metric)].mean())
    shifts = fg.shift_table(m[m["setting"] == "specified"])
    assert list(shifts.columns) == ["variant", "setting", "shift", "severity", "accuracy"]
    for r in shifts[shifts["severity"] > 0].itertuples():
        arm = folds[(folds["variant"] == r.variant) & (folds["setting"] == r.setting)]
        assert r.accuracy == pytest.approx(
            arm[column("shift", f"{r.shift}_s{r.severity}", "", "accuracy")].mean())
    assert set(shifts["severity"]) >= {0}


def test_no_report_module_parses_metric_names_with_regular_expressions():
    """Every ``re.<call>`` in smids_eval/report, by module and function: only the heading
    anchor (a section title, not a metric name) may use one."""
    import ast

    import smids_eval.report as package

    def re_calls(node) -> list:
        return [n for n in ast.walk(node) if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                and n.func.value.id == "re"]

    calls, modules = set(), 0
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        modules += 1
        tree = ast.parse(path.read_text())
        inside = set()
        for fn in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for call in re_calls(fn):
                inside.add(id(call))
                calls.add((path.stem, fn.name))
        calls |= {(path.stem, "<module>") for c in re_calls(tree) if id(c) not in inside}
    assert modules >= 6
    assert calls == {("glance", "anchor")}


def test_grouping_optimism_is_shown_repeat_by_repeat():
    """The optimism per repeat (random − grouped means of the same repeat), with how many are
    positive; one repeat, or folds without a repeat column, show a dash."""
    from smids_eval.report.markdown import _per_repeat_gap

    grouped = pd.DataFrame({"variant": "F.0", "setting": "specified", "repeat": [0, 0, 1, 1, 2],
                            "cls_macro_f1": [0.70, 0.72, 0.60, 0.62, 0.80]})
    random = grouped.assign(cls_macro_f1=grouped["cls_macro_f1"] + [0.01, 0.01, 0.03, 0.01, -0.02])
    assert (_per_repeat_gap(grouped, random, "F.0", "specified", "cls_macro_f1")
            == "+0.010, +0.020, -0.020 (2 of 3 positive)")
    one = grouped[grouped["repeat"] == 0]
    assert _per_repeat_gap(one, random[random["repeat"] == 0], "F.0", "specified",
                           "cls_macro_f1") == "—"
    assert _per_repeat_gap(grouped.drop(columns="repeat"), random, "F.0", "specified",
                           "cls_macro_f1") == "—"


def test_false_alarms_by_group_add_up_to_the_folds_tables(study):
    """The per-group table reads the crops' saved confidence index; weighted by crops it gives
    the held-out false-alarm rate that the folds table computed from the model's outputs."""
    run, _ = study
    report = Report.load(run)
    lines = by_group(report)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| group")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    crops = np.array([int(c[1]) for c in cells])
    called_out = np.array([float(c[2]) for c in cells])
    variant, setting = report.best_arm()
    part = report.folds[(report.folds.variant == variant) & (report.folds.setting == setting)]
    assert crops.sum() == part["n_test"].sum()
    expected = np.average(part["ood_heldout_in_distribution_flagged"], weights=part["n_test"])
    assert np.average(called_out, weights=crops) == pytest.approx(expected, abs=2e-3)  # 3 digits
    assert list(called_out) == sorted(called_out, reverse=True)
    assert len(cells) == report.preds.loc[report.preds.variant == variant, "group"].nunique()
