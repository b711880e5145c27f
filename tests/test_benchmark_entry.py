"""Smoke test of the main job (``tox -e benchmark``) on a tiny synthetic set."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from smids_eval.cli import module_main
from smids_eval.report.markdown import SECTIONS

TINY = str(Path(__file__).parent / "profiles" / "tiny.toml")


def test_benchmark_entry_writes_every_report_section_and_figure(tmp_path):
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
    # the optimism comparison ran the profile's variant under a plain stratified split
    rfolds = pd.read_csv(random_split / "folds.csv")
    assert set(rfolds["variant"]) == {"F.0"} and (rfolds["run_split"] == "random").all()
    assert (out / "leaderboard.csv").is_file()
    board = pd.read_csv(out / "leaderboard.csv")
    assert {"grouped", "random"} == set(board["run_split"])
