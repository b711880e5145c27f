"""smids-eval as a library: the wheel ships the configs in ``studies/`` and runs from any folder."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from smids_eval.run_folder import RunFolder
from smids_eval.toml import load_toml

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).parent / "profiles" / "tiny.toml"
#: Top-level entries of the checkout that the build does not read (caches, venvs, results, tests).
NOT_BUILT = {"build", "dist", "results", "tests", "benchmark"}


def test_pyproject_lists_every_package():
    """``packages`` is explicit (``studies/`` is remapped, so packages.find cannot be used):
    a new subpackage left out of it would be missing from the wheel."""
    tool = load_toml(ROOT / "pyproject.toml")["tool"]["setuptools"]
    source = {".".join(p.parent.relative_to(ROOT).parts)
              for p in (ROOT / "smids_eval").rglob("__init__.py")}
    data = {".".join(("smids_eval", *p.relative_to(ROOT).parts)):
            sorted({f"*{f.suffix}" for f in p.glob("*") if f.suffix in {".toml", ".csv"}})
            for p in [ROOT / "studies", *(ROOT / "studies").rglob("*")] if p.is_dir()}
    studies = {name: patterns for name, patterns in data.items() if patterns}
    assert set(tool["packages"]) == source | set(studies)
    assert tool["package-dir"] == {"smids_eval.studies": "studies"}
    assert {k: sorted(v) for k, v in tool["package-data"].items()} == studies


def _copy_source(dst: Path) -> Path:
    """The checkout as the build sees it, without ignored or unpackaged folders. Building in a
    copy leaves no ``build/`` or ``*.egg-info`` in the repository (and no stale ``build/lib``
    files can slip into the wheel)."""
    dst.mkdir()
    for entry in ROOT.iterdir():
        if entry.name.startswith(".") or entry.name in NOT_BUILT or entry.name.endswith(".egg-info"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(entry, dst / entry.name)
    return dst


def _pip(*args, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "pip", *map(str, args), "--no-index", "--disable-pip-version-check",
           "-q"]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"


#: Runs in the installed copy, from a folder outside the repository; prints one JSON line.
SCRIPT = """
import json, sys
from pathlib import Path

import smids_eval
from smids_eval import StudyConfig, run_study
from smids_eval.config import available_profiles, load_profile
from smids_eval.layout import source_root
from smids_eval.toml import studies_dir
from smids_eval.variants import select_variants

variants = select_variants(["all"])
quick = load_profile("quick")
result = run_study(StudyConfig(variants=("A.0",), profile="tiny.toml", out="results",
                               cache_dir=sys.argv[1], rf=False, settings=("specified",),
                               progress=False, seed=0))
print(json.dumps({
    "file": smids_eval.__file__,
    "modules": sorted({str(Path(m.__file__).resolve().parent) for name, m in sys.modules.items()
                       if name.split(".")[0] == "smids_eval" and getattr(m, "__file__", None)}),
    "source_root": str(source_root()), "studies": str(studies_dir()),
    "variants": [v.name for v in variants], "profiles": available_profiles(),
    "quick": quick.name, "rows": len(result.folds),
    "commits": sorted(set(result.folds["run_commit"])), "run": str(result.run.root.resolve()),
}))
"""


@pytest.mark.slow
def test_wheel_installs_and_runs_a_study_outside_the_repository(tmp_path):
    pytest.importorskip("setuptools", reason="the build backend (used without build isolation)")
    t0 = time.perf_counter()
    src, dist, site, elsewhere = (tmp_path / n for n in ("src", "dist", "site", "elsewhere"))
    _copy_source(src)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", dist, src, cwd=tmp_path)
    (wheel,) = dist.glob("smids_eval-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"smids_eval/studies/{p.relative_to(ROOT / 'studies').as_posix()}"
               for p in (ROOT / "studies").rglob("*") if p.suffix in {".toml", ".csv"}}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert not any(n.startswith(("studies/", "tests/", "benchmark/")) for n in names)
    _pip("install", "--no-deps", "--target", site, wheel, cwd=tmp_path)

    elsewhere.mkdir()
    shutil.copy(TINY, elsewhere / "tiny.toml")  # a profile given by a path outside the repository
    # PYTHONPATH entries precede site-packages, and the editable install's finder sits at the end
    # of sys.meta_path, so the interpreter of this venv imports the installed copy.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMIDS_")}
    env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1", MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "cache")], cwd=elsewhere,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])

    site = site.resolve()
    assert Path(got["file"]).resolve().is_relative_to(site), got["file"]
    assert got["modules"] and all(Path(m).is_relative_to(site) for m in got["modules"]), got
    assert got["source_root"] == "None"
    assert Path(got["studies"]).resolve() == site / "smids_eval" / "studies"
    assert got["variants"] == [v.name for v in _repo_variants()]
    assert set(got["profiles"]) == {p.stem for p in (ROOT / "studies" / "profiles").glob("*.toml")}
    assert got["quick"] == "quick"
    assert got["rows"] == 2  # tiny profile: 2 outer folds × one variant × one setting
    run = Path(got["run"])
    assert run.is_relative_to(elsewhere.resolve())
    folds = RunFolder(run).folds_csv
    assert folds.is_file() and not (run / "folds.csv").exists()
    with gzip.open(folds, "rt") as fh:
        assert sum(1 for _ in fh) == 1 + 2
    assert got["commits"] == ["smids-eval==" + _version()]  # not the commit of some outer repo
    print(f"wheel build + install + tiny study: {time.perf_counter() - t0:.1f} s")


def _repo_variants():
    from smids_eval.variants import select_variants

    return select_variants(["all"])


def _version() -> str:
    from smids_eval import __version__

    return __version__
