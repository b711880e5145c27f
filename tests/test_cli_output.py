"""Terminal output of the commands: log lines never land on a progress bar's line, and
``--quiet`` / ``--verbose`` set how much is said."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from smids_eval.cli import COMMANDS, build_parser, log_level

SCRIPT = textwrap.dedent("""
    import argparse, logging, sys
    from tqdm import tqdm
    from smids_eval.cli import run_command

    def job(args):
        bar = tqdm(total=4, desc="PROGRESSBAR", file=sys.stderr, disable=False, mininterval=0)
        bar.update(2)
        logging.getLogger("smids_eval.test").info("LOGLINE reached")
        bar.update(2)
        bar.close()
        return 0

    sys.exit(run_command(job, argparse.Namespace(quiet=False, verbose=False)))
""")


def test_log_lines_do_not_share_a_line_with_a_progress_bar():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.split("\n") if "LOGLINE" in x)
    # what is visible of that terminal line: the text after its last carriage return
    assert "PROGRESSBAR" not in line.split("\r")[-1]
    assert line.split("\r")[-1].rstrip().endswith("LOGLINE reached")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_takes_quiet_and_verbose(command):
    p = build_parser(command)
    assert log_level(p.parse_args([*_required(command), "--quiet"])) == logging.WARNING
    assert log_level(p.parse_args([*_required(command), "-v"])) == logging.DEBUG
    assert log_level(p.parse_args(_required(command))) == logging.INFO
    with pytest.raises(SystemExit):
        p.parse_args([*_required(command), "--quiet", "--verbose"])


def _required(command: str) -> list[str]:
    return {"predict": ["img.png", "--run", "r", "--variant", "F.0"],
            "report": ["run"]}.get(command, [])
