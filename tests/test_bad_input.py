"""Bad input and faults end in one ``error: …`` line (exit 2), never a traceback (issue 14)."""

from __future__ import annotations

import errno
import warnings
from pathlib import Path

import numpy as np
import pytest

from smids_eval import StudyConfig
from smids_eval.cli import module_main
from smids_eval.errors import ConfigError

TINY = Path(__file__).parent / "profiles" / "tiny.toml"


def one_error_line(capsys, *needles: str) -> str:
    """stderr holds exactly one ``error:`` line, no traceback, and it names every needle."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def study(tmp_path, *extra: str) -> int:
    return module_main("study", ["--profile", str(TINY), "--variant", "A.0", "--no-progress",
                                 "--cache-dir", str(tmp_path / "cache"), *extra])


# --------------------------------------------------------------------------- profile numbers


def bad_profile(tmp_path, section: str, key: str, value) -> Path:
    text = "".join(line for line in TINY.read_text().splitlines(keepends=True)
                   if not line.startswith(f"{key} = "))
    head, sep, tail = text.partition(f"[{section}]\n")
    path = tmp_path / "bad.toml"
    path.write_text(f"{head}{sep}{key} = {value}\n{tail}" if sep
                    else f"{text}\n[{section}]\n{key} = {value}\n")
    return path


@pytest.mark.parametrize("section,key,value,allowed", [
    ("train", "epochs", -3, "allowed: ≥ 1"), ("train", "epochs", 0, "≥ 1"),
    ("train", "batch_size", 0, "≥ 1"), ("tune", "trials", 0, "≥ 1"),
    ("cv", "inner_folds", 1, "≥ 2"), ("model", "dropout_p", 1.5, "0 ≤ value < 1"),
    ("evaluate", "conformal_alphas", "[0.1, 2.0]", "0 < value < 1"),
])
def test_profile_numbers_are_checked_when_loaded(tmp_path, capsys, section, key, value, allowed):
    path = bad_profile(tmp_path, section, key, value)
    code = module_main("study", ["--profile", str(path), "--variant", "A.0", "--out",
                                 str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    one_error_line(capsys, str(path), f"[{section}]", f"{key} = ", allowed)
    assert not list((tmp_path / "out").glob("*/config.toml"))


def test_profile_overrides_are_checked_too():
    config = StudyConfig(profile=str(TINY), overrides={"train": {"epochs": -3}})
    with pytest.raises(ConfigError, match=r"with overrides \[train\]: epochs = -3 .*≥ 1"):
        config.resolve_profile(False)


# --------------------------------------------------------------------------- sklearn warning


def test_scorers_pass_probabilities_that_sum_to_one():
    """float32 MC-dropout passes averaged in float64 are off by ~1e-7: scikit-learn warned
    "y_prob values do not sum to one" on every fold."""
    import torch

    from smids_eval.evaluate.mc_dropout import MCDropoutScorer
    from smids_eval.evaluate.metrics import ClassificationScorer
    from smids_eval.outputs import ModelOutputs

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 3)).astype(np.float32) * 4
    mc = torch.softmax(torch.tensor(logits)[None] + torch.randn(20, 400, 3), 2).numpy()
    outputs = ModelOutputs(logits=logits, features=logits, labels=rng.integers(0, 3, 400),
                           mc_probs=mc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(MCDropoutScorer().score(outputs)["mc_nll"])
        assert np.isfinite(ClassificationScorer().score(outputs)["cls_nll"])


# --------------------------------------------------------------------------- groups


@pytest.mark.parametrize("n", ["0", "1", "-4"])
def test_too_few_groups_asks_for_two_or_more(tmp_path, capsys, n):
    assert study(tmp_path, "--out", str(tmp_path / "out"), "--n-groups", n) == 2
    one_error_line(capsys, f"--n-groups must be ≥ 2 (got {n})", "--n-groups 2 or more")


def test_one_group_advice_is_an_option_that_works():
    from smids_eval.splits import make_repeated_splits

    labels = np.arange(30) % 3
    with pytest.raises(ConfigError, match="at least 2 groups.*--n-groups 2 or more") as info:
        make_repeated_splits(labels, np.zeros(30, dtype=int), 2, 2, 0, 1)
    assert "--folds 1" not in str(info.value)


def test_more_groups_than_images_is_refused(tmp_path, tiny_folder, capsys):
    assert study(tmp_path, "--out", str(tmp_path / "out"), "--data-dir", str(tiny_folder),
                 "--n-groups", "5000") == 2
    one_error_line(capsys, "--n-groups 5000", "12 images", "--n-groups 12 or fewer")
    assert not list((tmp_path / "out").glob("*/config.toml"))


def test_groups_file_errors_name_real_options(tmp_path, tiny_folder, capsys):
    missing = tmp_path / "none.csv"
    assert study(tmp_path, "--out", str(tmp_path / "out"), "--data-dir", str(tiny_folder),
                 "--groups-file", str(missing)) == 2
    line = one_error_line(capsys, str(missing), "drop --groups-file", "--n-groups")
    assert "grouping source" not in line


# --------------------------------------------------------------------------- where results go


def deny_writes(monkeypatch):
    """As if the folder were not writable (the tests run as root, where chmod does not stop)."""
    import smids_eval.io

    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(smids_eval.io.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("command", ["study", "benchmark"])
def test_out_that_is_a_file(tmp_path, capsys, command):
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    args = ["--profile", str(TINY), "--variant", "A.0", "--no-progress", "--out", str(out)]
    assert module_main(command, args) == 2
    one_error_line(capsys, f"--out {out} is a file, not a folder", "pass a folder")
    assert module_main(command, [*args[:-1], str(out / "sub")]) == 2
    one_error_line(capsys, f"--out {out / 'sub'} is not a writable folder", "a part of the path is a file")


def test_out_that_is_not_writable(tmp_path, capsys, monkeypatch):
    deny_writes(monkeypatch)
    assert study(tmp_path, "--out", str(tmp_path)) == 2
    one_error_line(capsys, f"--out {tmp_path} is not a writable folder", "permission denied")


def test_predict_out_that_is_a_folder_or_not_writable(tmp_path, capsys, monkeypatch):
    args = [str(tmp_path), "--run", str(tmp_path / "run"), "--variant", "F.1", "--out"]
    assert module_main("predict", [*args, str(tmp_path)]) == 2
    one_error_line(capsys, f"--out {tmp_path} is a folder", "pass the CSV file")
    deny_writes(monkeypatch)
    assert module_main("predict", [*args, str(tmp_path / "p.csv")]) == 2
    one_error_line(capsys, f"--out {tmp_path / 'p.csv'}: its folder {tmp_path}", "not a writable")


def full_disk(monkeypatch):
    import smids_eval.io

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(smids_eval.io.os, "fsync", fsync)


def test_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from smids_eval.errors import OutputError
    from smids_eval.io import write_json

    path = tmp_path / "folds" / "F.1" / "r0-f0-tuned.json"
    write_json(path, {"finished": 1})
    full_disk(monkeypatch)
    with pytest.raises(OutputError, match=rf"cannot write {path}: no space left .*errno 28.*kept"):
        write_json(path, {"finished": 2})
    assert path.read_text() == '{\n "finished": 1\n}'
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


@pytest.mark.parametrize("fault", ["atomic write", "other write"])
def test_full_disk_or_read_only_during_a_study_is_one_error_line(tmp_path, capsys, monkeypatch,
                                                                  fault):
    import smids_eval.study
    from smids_eval.io import write_json

    fold = tmp_path / "out" / "run" / "folds" / "A.0" / "r0-f1-specified.json"

    def run_study(config):
        if fault == "atomic write":
            full_disk(monkeypatch)
            write_json(fold, {})
        raise OSError(errno.EROFS, "Read-only file system", str(fold.parent))

    monkeypatch.setattr(smids_eval.study, "run_study", run_study)
    assert study(tmp_path, "--out", str(tmp_path / "out")) == 2
    reason = "no space left" if fault == "atomic write" else "read-only file system"
    one_error_line(capsys, f"cannot write {fold if fault == 'atomic write' else fold.parent}",
                   reason, "finished folds", "rerun the same command to resume")


# --------------------------------------------------------------------------- failed starts


@pytest.mark.parametrize("weights", ["imagenet", "garbage"])
def test_failed_start_leaves_no_run_folder(tmp_path, capsys, weights):
    """Weights that cannot be used fail before config.toml exists: the corrected rerun into the
    same --out is not refused as "made with other settings"."""
    out = tmp_path / "out"
    if weights == "garbage":
        bad = tmp_path / "vgg19.pth"
        bad.write_bytes(b"not a checkpoint")
        extra, needle = ["--weights-file", str(bad)], f"weights file {bad}"
    else:  # the tiny model cannot take ImageNet weights: the same failure as offline
        extra, needle = ["--weights", "imagenet"], "ImageNet"
    assert study(tmp_path, "--out", str(out), *extra) == 2
    one_error_line(capsys, needle)
    assert not list(out.glob("*/config.toml"))


def _full_sqlite_error(path):
    """A real SQLAlchemy OperationalError of a full SQLite database (page limit reached)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA max_page_count = 2")
            conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
            for _ in range(200):
                conn.exec_driver_sql("INSERT INTO t VALUES (?)", ("x" * 1000,))
    except sqlalchemy.exc.OperationalError as exc:
        return exc
    raise AssertionError("the page limit did not fill the database")


def test_full_optuna_database_during_a_study_is_one_error_line(tmp_path, capsys, monkeypatch):
    import smids_eval.study

    error = _full_sqlite_error(tmp_path / "optuna.db")
    assert "full" in str(error)

    def run_study(config):
        raise error

    monkeypatch.setattr(smids_eval.study, "run_study", run_study)
    assert study(tmp_path, "--out", str(tmp_path / "out")) == 2
    one_error_line(capsys, "Optuna storage failed: no space left on the device",
                   "finished folds", "rerun the same command to resume")
