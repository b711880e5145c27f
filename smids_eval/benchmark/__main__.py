"""``python -m smids_eval.benchmark``: the same as ``smids benchmark`` (see ``smids_eval.cli``)."""

import sys

from smids_eval.cli import module_main

if __name__ == "__main__":
    sys.exit(module_main("benchmark"))
