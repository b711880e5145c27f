"""``python -m smids_eval.data``: the same as ``smids data`` (see ``smids_eval.cli``)."""

import sys

from smids_eval.cli import module_main

if __name__ == "__main__":
    sys.exit(module_main("data"))
