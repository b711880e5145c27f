"""Many workers on one run folder: each fold × arm claimed and computed once, tuning budgets
held, the numbers of a single worker; claims of dead workers are taken over."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest

from smids_eval.claims import Claims
from smids_eval.reproduction import compare_runs
from smids_eval.run_folder import RunFolder
from smids_eval.tune import FINISHED

TINY = str(Path(__file__).parent / "profiles" / "tiny.toml")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
SAVED = re.compile(r"smids_eval\.study: (\S+) repeat (\d+) fold (\d+) (\S+): macro-F1")


# --------------------------------------------------------------------------- claims


def test_a_claim_is_held_once_and_released(tmp_path):
    a, b = Claims(tmp_path), Claims(tmp_path)
    with a.claim("B.0/r0-fold1-tuned") as ours:
        assert ours
        with b.claim("B.0/r0-fold1-tuned") as theirs:
            assert not theirs  # the other worker moves on
    assert not a.path("B.0/r0-fold1-tuned").exists()
    with b.claim("B.0/r0-fold1-tuned") as ours:
        assert ours


def test_the_claim_of_a_dead_worker_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    ghost = Claims(tmp_path)
    ghost.pid = int(dead.stdout)  # a worker of this host whose process has ended
    ghost.token = f"{ghost.host}:{ghost.pid}:x"
    assert ghost.acquire("A.0/r0-fold0-specified")
    alive = Claims(tmp_path)
    assert alive.stale("A.0/r0-fold0-specified") and alive.acquire("A.0/r0-fold0-specified")
    assert alive.owner("A.0/r0-fold0-specified")["worker"] == alive.token
    # another host's claim counts as alive while its heartbeat is fresh, stale when it is old
    remote = Claims(tmp_path)
    remote.host, remote.token = "elsewhere", "elsewhere:1:y"
    assert remote.acquire("A.0/r0-fold1-specified")
    assert not alive.acquire("A.0/r0-fold1-specified")
    old = time.time() - 2 * alive.stale_after
    os.utime(alive.path("A.0/r0-fold1-specified"), (old, old))
    assert alive.acquire("A.0/r0-fold1-specified")


def test_the_heartbeat_keeps_a_long_claim_fresh(tmp_path):
    worker = Claims(tmp_path, heartbeat=0.05)
    with worker.claim("k") as ours:
        assert ours
        old = time.time() - 1000
        os.utime(worker.path("k"), (old, old))
        time.sleep(0.3)
        assert time.time() - worker.path("k").stat().st_mtime < 5


# --------------------------------------------------------------------------- workers


def _study(out: Path, cache: Path, storage: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "smids_eval.study", "--profile", TINY, "--variant", "B.0",
           "--settings", "specified,tuned", "--no-rf", "--out", str(out), "--cache-dir",
           str(cache), "--no-progress", "--no-report"]
    return cmd + (["--storage", storage] if storage else [])


def _backends():
    yield "sqlite"
    yield "journal"
    yield "postgres"


@pytest.mark.parametrize("backend", list(_backends()))
def test_three_workers_compute_each_fold_once_with_one_workers_numbers(tmp_path, backend):
    if backend == "postgres" and not os.environ.get("SMIDS_TEST_POSTGRES_URL"):
        pytest.skip("SMIDS_TEST_POSTGRES_URL not set (.ci/run starts a PostgreSQL server)")
    cache = tmp_path / "cache"
    single = tmp_path / "single"
    subprocess.run(_study(single, cache, None), env=ENV, check=True, capture_output=True,
                   timeout=600)
    shared = tmp_path / "shared"
    storage = {"sqlite": None, "journal": str(shared / "optuna.journal"),
               "postgres": os.environ.get("SMIDS_TEST_POSTGRES_URL")}[backend]
    # the README recipe: the same command N times
    procs = [subprocess.Popen(_study(shared, cache, storage), env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    failed = [log[-3000:] for p, log in zip(procs, logs, strict=True) if p.returncode != 0]
    assert not failed, failed
    saved = Counter(m.groups() for log in logs for m in SAVED.finditer(log))
    assert set(saved.values()) == {1} and len(saved) == 4, saved  # 2 folds x 2 settings, once
    assert sum(bool(SAVED.search(log)) for log in logs) >= 2  # the work was spread
    (single_run,) = [p for p in single.iterdir() if p.is_dir()]
    (shared_run,) = [p for p in shared.iterdir() if p.is_dir()]
    # every tuning study of the run: its budget of finished trials, none left running
    url = storage or f"sqlite:///{shared_run / 'optuna.db'}"
    if backend == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        url = JournalStorage(JournalFileBackend(storage))
    names = [s.study_name for s in optuna.get_all_study_summaries(url)
             if s.study_name.startswith("smids-B.0-") and shared_run.name.split("-")[2]
             in s.study_name]
    folds = pd.read_csv(RunFolder(shared_run).folds_csv)
    assert sorted(zip(folds["setting"], folds["fold"], strict=True)) == [
        ("specified", 0), ("specified", 1), ("tuned", 0), ("tuned", 1)]
    assert set(folds["variant"]) == {"B.0"} and len(names) == 2
    for name in names:
        trials = optuna.load_study(study_name=name, storage=url).trials
        assert sum(t.state in FINISHED for t in trials) == int(folds["tune_trials"].max())
        assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)
    record = compare_runs(shared_run, single_run)
    assert record["rows_compared"] == 4 and record["within_tolerance"], record
    assert record["max_abs_delta"]["cls"] == 0.0
    assert not (shared_run / "claims").exists()  # every claim released, the folder removed


# --------------------------------------------------------------------------- --jobs


def test_worker_registry_counts_live_processes_of_this_host_only(tmp_path):
    me, other = Claims(tmp_path), Claims(tmp_path)
    me.join()
    assert me.live_here() == 1
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    me.join(int(dead.stdout))          # a helper that has ended: not counted, its file removed
    me.join(os.getppid())              # a live process of this host
    remote = Claims(tmp_path)
    remote.host, remote.pid = "elsewhere", 1
    remote.join()                      # another machine's worker: its cores are not ours
    assert me.live_here() == 2
    assert not me._worker_file(me.host, int(dead.stdout)).exists()
    other.pid = os.getppid()
    other.leave()
    assert me.live_here() == 1


def test_jobs_split_a_study_across_processes_with_the_single_process_numbers(tmp_path):
    """``--jobs 2``: a helper process shares the work (each result computed once, by either
    process), and since every computation runs at the profile's cpu_threads the numbers equal
    a single process's in every column."""
    profile = tmp_path / "tiny_one_thread.toml"
    profile.write_text(Path(TINY).read_text().replace("[train]\n", "[train]\ncpu_threads = 1\n"))
    runs = {}
    for jobs in ("1", "2"):
        cmd = [sys.executable, "-m", "smids_eval.study", "--profile", str(profile),
               "--variant", "A.0", "--variant", "B.0", "--variant", "C.0", "--no-rf",
               "--out", str(tmp_path / f"jobs{jobs}"), "--cache-dir", str(tmp_path / "cache"),
               "--no-progress", "--no-report", "--jobs", jobs]
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        (runs[jobs],) = [p for p in (tmp_path / f"jobs{jobs}").iterdir() if p.is_dir()]
        if jobs == "2":
            assert "--jobs 2: 1 helper process(es)" in done.stderr
    workers = Counter(json.loads(p.read_text())["computed_by"]
                      for p in (runs["2"] / "folds").glob("*/*.json"))
    assert sum(workers.values()) == 12 and len(workers) == 2, workers  # 3 x 2 settings x 2 folds
    record = compare_runs(runs["2"], runs["1"])
    assert record["rows_compared"] == 12 and record["within_tolerance"], record
    assert set(record["max_abs_delta"].values()) == {0.0}, record["max_abs_delta"]
    assert not (runs["2"] / "claims").exists()


def _orphan_watch(flag: str) -> None:
    """A helper-like child: says when it watches its (live) parent, then when it is gone."""
    from smids_eval.fold import parent_gone

    if parent_gone():
        return
    Path(flag).write_text("watching")
    for _ in range(1200):
        if parent_gone():
            Path(flag).write_text("parent gone")
            return
        time.sleep(0.05)


def _parent_of_watcher(flag: str) -> None:
    import multiprocessing

    multiprocessing.get_context("spawn").Process(target=_orphan_watch, args=(flag,)).start()
    time.sleep(120)


def test_a_helper_sees_that_the_study_that_started_it_was_killed(tmp_path):
    """``--jobs`` helpers stop before their next arm once their parent is gone (kill -9), rather
    than computing unattended; a process not spawned as a helper is never told it is orphaned."""
    import multiprocessing
    import signal

    from smids_eval.fold import parent_gone

    assert not parent_gone()          # pytest's process was not spawned by multiprocessing
    flag = tmp_path / "flag"
    parent = multiprocessing.get_context("spawn").Process(target=_parent_of_watcher,
                                                          args=(str(flag),))
    parent.start()
    deadline = time.time() + 60
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert flag.read_text() == "watching"          # parent alive: the helper goes on
    os.kill(parent.pid, signal.SIGKILL)
    parent.join()
    deadline = time.time() + 30
    while flag.read_text() != "parent gone" and time.time() < deadline:
        time.sleep(0.1)
    assert flag.read_text() == "parent gone"
