"""Optuna search: storage choices, pruning of diverged trials, two workers sharing one study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from smids_eval.config import SearchSpace
from smids_eval.errors import ConfigError, TrainingDiverged
from smids_eval.tune import FINISHED, open_storage, study_name, tune

WORKER = str(Path(__file__).with_name("tune_worker.py"))


def test_default_storage_is_sqlite_in_run_folder(tmp_path):
    storage = open_storage(None, tmp_path)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("value", ["not-a-url", "postgresql://x:y@127.0.0.1:1/none"])
def test_bad_storage_is_a_clear_error(tmp_path, value):
    with pytest.raises(ConfigError, match="storage|--storage"):
        open_storage(value, tmp_path)


def test_diverged_trials_are_pruned_not_fatal_and_study_resumes(tmp_path):
    storage = open_storage(None, tmp_path)
    calls = []

    def objective(params, report):
        calls.append(params)
        if len(calls) % 2 == 0:
            raise TrainingDiverged("loss became nan")
        return params["learning_rate"]

    name = study_name("F.0", 0, "tiny", "abc")
    best = tune(objective, name=name, storage=storage, n_trials=4, space=SearchSpace(), seed=1)
    assert best["n_trials"] == 4 and len(calls) == 4
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == 2
    assert best["learning_rate"] == max(t.value for t in study.trials if t.value is not None)
    tune(objective, name=name, storage=storage, n_trials=4, space=SearchSpace(), seed=1)
    assert len(calls) == 4  # resumed study: nothing left to do
    tune(objective, name=name, storage=storage, n_trials=6, space=SearchSpace(), seed=1)
    assert len(calls) == 6


def test_single_worker_is_deterministic(tmp_path):
    def objective(params, report):
        return -params["learning_rate"]

    results = [tune(objective, name="s", storage=open_storage(None, tmp_path / str(i)), n_trials=5,
                    space=SearchSpace(), seed=7) for i in range(2)]
    assert results[0] == results[1]


def _storages(tmp_path):
    yield f"{tmp_path}/shared.journal"
    url = os.environ.get("SMIDS_TEST_POSTGRES_URL")
    if url:
        yield url


@pytest.mark.parametrize("backend", ["journal", "postgres"])
def test_two_workers_share_one_study_without_repeating_a_trial(tmp_path, backend):
    if backend == "postgres":
        url = os.environ.get("SMIDS_TEST_POSTGRES_URL")
        if not url:
            pytest.skip("SMIDS_TEST_POSTGRES_URL not set (.ci/run starts a PostgreSQL server)")
    else:
        url = f"{tmp_path}/shared.journal"
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    n_trials = 10
    procs = [subprocess.Popen([sys.executable, WORKER, url, name, str(n_trials)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    evaluated = {}  # worker pid -> params its objective was called with, as printed by it
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out
        evaluated[p.pid] = sorted(line.split(" ", 1)[1] for line in out.splitlines()
                                  if line.startswith("EVALUATED "))
    study = optuna.load_study(study_name=name, storage=open_storage(url, tmp_path))
    trials = study.get_trials(states=FINISHED)
    # the budget is shared: at most one extra trial per worker racing at the very end
    assert n_trials <= len(trials) <= n_trials + 1
    assert all(t.state in FINISHED for t in study.trials)  # no orphaned RUNNING trial
    # each finished trial was evaluated by exactly one worker, the one Optuna recorded, and no
    # worker evaluated a point that is not a finished trial of the study
    owner = {pid: sorted(json.dumps(t.params, sort_keys=True) for t in trials
                         if t.user_attrs["worker"].endswith(f":{pid}")) for pid in evaluated}
    assert evaluated == owner
    assert sum(len(v) for v in evaluated.values()) == len(trials)
    assert all(evaluated.values())  # both processes worked on the study
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)  # no point was evaluated twice


KILLED_WORKER = """
import math, os, signal, sys
from smids_eval.config import SearchSpace
from smids_eval.tune import open_storage, tune

calls = 0

def objective(params, report):
    global calls
    calls += 1
    if calls == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of a trial
    value = -abs(math.log10(params["learning_rate"]) + 3.5)
    report(0, value)
    return value

tune(objective, name="s", storage=open_storage(sys.argv[1], None), n_trials=8,
     space=SearchSpace(), seed=5, pruner="median")
"""


def _objective(params, report):
    import math

    value = -abs(math.log10(params["learning_rate"]) + 3.5)
    report(0, value)
    return value


@pytest.mark.parametrize("kill_at", [2, 6])
def test_resume_after_kill_9_in_tuning_gives_the_uninterrupted_result(tmp_path, kill_at):
    """kill -9 during trial ``kill_at`` leaves a RUNNING trial; the resumed search fails it,
    replays the sampler and evaluates exactly the points of an uninterrupted search."""
    reference_storage = f"sqlite:///{tmp_path / 'reference.db'}"
    reference = tune(_objective, name="s", storage=open_storage(reference_storage, None),
                     n_trials=8, space=SearchSpace(), seed=5, pruner="median")
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    done = subprocess.run([sys.executable, "-c", KILLED_WORKER, storage, str(kill_at)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.RUNNING) == 1
    resumed = tune(_objective, name="s", storage=open_storage(storage, None), n_trials=8,
                   space=SearchSpace(), seed=5, pruner="median")
    assert resumed == reference
    finished = [t.params for t in optuna.load_study(study_name="s", storage=storage).trials
                if t.state in FINISHED]
    expected = [t.params for t in optuna.load_study(study_name="s", storage=reference_storage)
                .trials if t.state in FINISHED]
    assert finished == expected and len(finished) == 8  # the budget counts finished trials
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert optuna.trial.TrialState.RUNNING not in states
