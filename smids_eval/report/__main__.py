"""``python -m smids_eval.report``: the same as ``smids report`` (see ``smids_eval.cli``)."""

import sys

from smids_eval.cli import module_main

if __name__ == "__main__":
    sys.exit(module_main("report"))
