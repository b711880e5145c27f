"""A tuning worker process for the multi-worker test: joins study NAME on STORAGE and prints
one ``EVALUATED <json params>`` line per objective call, so the test can check from outside
Optuna which worker evaluated which trial."""

import json
import sys
import time

from smids_eval.config import SearchSpace
from smids_eval.tune import open_storage, tune


def objective(params: dict, report) -> float:
    import math

    print("EVALUATED", json.dumps(params, sort_keys=True), flush=True)
    time.sleep(0.3)  # long enough for the two workers to interleave
    value = -abs(math.log10(params["learning_rate"]) + 3.5)
    report(0, value)
    return value


if __name__ == "__main__":
    storage_url, name, n_trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    storage = open_storage(storage_url, None)
    tune(objective, name=name, storage=storage, n_trials=n_trials, space=SearchSpace(), seed=0,
         pruner="none", shared=True)
