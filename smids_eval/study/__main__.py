"""``python -m smids_eval.study``: the same as ``smids study`` (see ``smids_eval.cli``)."""

import sys

from smids_eval.cli import module_main

if __name__ == "__main__":
    sys.exit(module_main("study"))
