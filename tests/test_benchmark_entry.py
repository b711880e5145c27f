"""Smoke test of the main job (``tox -e benchmark``) on a tiny synthetic set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from smids_eval.cli import module_main
from smids_eval.report.markdown import SECTIONS
from smids_eval.run_folder import RunFolder

TINY = str(Path(__file__).parent / "profiles" / "tiny.toml")


def test_benchmark_entry_writes_every_report_section_and_figure(tmp_path, capsys):
    out = tmp_path / "results"
    args = ["--profile", TINY, "--variant", "B.0", "--variant", "F.0", "--settings", "specified",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--no-throughput"]
    assert module_main("benchmark", args) == 0
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name.endswith("-random-split") for p in runs] == [False, True]
    grouped, random_split = runs
    report = (grouped / "report.md").read_text()
    for section, _ in SECTIONS:
        if section.lower().startswith("throughput"):
            continue
        assert re.search(rf"^#+ .*{re.escape(section)}", report, re.M), section
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", report)
    assert len(figures) >= 10
    for fig in figures:
        assert (grouped / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    assert "section failed" not in report
    # the 'At a glance' block is printed once, at the end, for the grouped run and its twin
    printed = capsys.readouterr().out
    assert printed.count("At a glance:") == 1 and printed.startswith(grouped.name)
    assert "Grouping optimism" in printed
    # the optimism comparison ran the profile's variant under a plain stratified split
    rfolds = pd.read_csv(RunFolder(random_split).folds_csv)
    assert set(rfolds["variant"]) == {"F.0"} and (rfolds["run_split"] == "random").all()
    assert (out / "leaderboard.csv").is_file()
    board = pd.read_csv(out / "leaderboard.csv")
    assert {"grouped", "random"} == set(board["run_split"])
    # the study's timings.json covers the whole job; the twin has its own
    timings = json.loads((grouped / "timings.json").read_text())
    assert {"prepare", "final_fits", "random_split", "report"} <= set(timings["stages_s"])
    assert sum(timings["stages_s"].values()) <= timings["wall_s"]
    assert "final_fits" in json.loads((random_split / "timings.json").read_text())["stages_s"]
    # ...and so does the report's cost, re-written once the report's own stage is timed, with
    # the main study's figures (what the study wrote at its end) labelled beside the whole
    main = timings["main_study"]
    assert timings["scope"] == "benchmark" and main["wall_s"] < timings["wall_s"]
    assert timings["bf16_peak_end_gflops"] > 0   # measured again at the end
    assert set(timings["stages_s"]) - set(main["stages_s"]) == {"random_split", "report"}
    cost = report.split("## Cost of this run", 1)[1]
    wall = timings["wall_s"]
    assert (f"**wall time of the whole benchmark**: {wall / 60:.1f} min ({wall:.0f} s): the "
            f"main study, then random_split, report") in cost
    assert f"700 GFLOP/s)**: {timings['normalised_wall_s']} s" in cost
    assert (f"**main study**: {main['wall_s'] / 60:.1f} min ({main['wall_s']:.0f} s) wall, "
            f"normalised {main['normalised_wall_s']} s") in cost
    assert re.search(r"^\| after the main study \| report \| \d", cost, re.M)


def test_benchmark_plan_prints_the_study_and_its_random_split_twin(tmp_path, capsys):
    out = tmp_path / "results"
    args = ["--profile", TINY, "--variant", "B.0", "--settings", "specified", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--plan"]
    assert module_main("benchmark", args) == 0
    text = capsys.readouterr().out
    runs = re.findall(r"^plan for run (\S+)", text, re.M)
    assert len(runs) == 2 and runs[1] == runs[0] + "-random-split"
    assert not out.exists()


def test_benchmark_runs_the_grouping_sensitivity_twins_when_groups_are_inferred(tmp_path):
    """A class-folder data set (no manifest: inferred acquisition groups) gets the optimism
    variant again with the profile's other group counts, next to the random-split twin, and the
    report tabulates them by number of groups."""
    from smids_eval.data.synthetic import SPEC, generate

    data = generate(tmp_path / "smids", n_images=60, n_donors=6, seed=1, size_range=(32, 40),
                    style="legacy")
    for name in (SPEC.manifest_name, "donors.csv"):
        (data / name).unlink(missing_ok=True)
    profile = tmp_path / "tiny_sensitivity.toml"
    profile.write_text(Path(TINY).read_text() + "\n[benchmark]\nsensitivity_groups = [5, 8]\n")
    out = tmp_path / "results"
    args = ["--profile", str(profile), "--variant", "F.0", "--settings", "specified",
            "--data-dir", str(data), "--n-groups", "8", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--no-throughput"]
    assert module_main("benchmark", args) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    main = min(names, key=len)
    # 8 groups is the study itself: only the 5-group twin and the random split are extra
    assert names == sorted([main, main + "-groups5", main + "-random-split"])
    twin = pd.read_csv(out / (main + "-groups5") / "splits.csv")
    assert twin["group"].nunique() == 5
    assert set(pd.read_csv(RunFolder(out / (main + "-groups5")).folds_csv)["setting"]) == {"specified"}
    report = (out / main / "report.md").read_text()
    section = report.split("## Sensitivity to the grouping", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| inferred")
            or line.startswith("| same-cell")]
    assert [row.split("|")[2].strip() for row in rows] == ["5", "8", "—"]
    assert rows[-1].startswith("| same-cell units alone")
