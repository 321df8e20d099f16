"""The study's progress display: plain lines at a steady interval off a terminal, rich's bar on one."""

from __future__ import annotations

import doctest
import io
import os
import re
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("rich")

from rich.console import Console

from labelsmooth.study import progress
from labelsmooth.study.progress import format_duration, progress_line, status, track


def test_docstring_examples():
    result = doctest.testmod(progress, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_durations_and_lines():
    assert format_duration(0) == "0:00"
    assert format_duration(59.6) == "1:00"
    assert format_duration(3599) == "59:59"
    assert format_duration(3600) == "1:00:00"
    assert format_duration(-3) == "0:00"
    assert progress_line(3, 12, 90.0) == "runs 3/12 (25%), elapsed 1:30, eta 4:30"
    assert (
        progress_line(12, 12, 90.0, last="digits ce") == "runs 12/12 (100%), elapsed 1:30, eta 0:00 (last: digits ce)"
    )
    assert progress_line(0, 0, 1.0) == "runs 0/0 (100%), elapsed 0:01, eta unknown"


def plain_console() -> Console:
    return Console(file=io.StringIO(), width=200)  # a StringIO is not a terminal


def test_off_a_terminal_lines_come_at_a_steady_interval_even_while_no_run_finishes():
    console = plain_console()
    assert not console.is_terminal
    ticks = iter(range(1000))  # a clock that moves 10 s per reading: elapsed times are predictable

    with track(console, 4, interval=0.02, clock=lambda: 10.0 * next(ticks)) as shown:
        shown.advance(1, last="digits ce eps=0 clean seed=0")
        # No run finishes for a while (one long training): lines must keep coming.
        deadline = time.monotonic() + 10
        while console.file.getvalue().count("runs 1/4") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        shown.print("[red]failed[/red] digits ls eps=0.1 clean seed=0: RuntimeError: boom")
        shown.advance(3, last="digits ls eps=0.1 clean seed=0")
    lines = console.file.getvalue().splitlines()
    assert lines[0] == "training 4 run(s); a progress line every 0.02 s"
    assert sum(line.startswith("runs 1/4 (25%), elapsed ") for line in lines) >= 3
    assert all("last: digits ce eps=0 clean seed=0" in line for line in lines if line.startswith("runs 1/4"))
    assert "failed digits ls eps=0.1 clean seed=0: RuntimeError: boom" in lines  # markup rendered, not shown
    assert re.fullmatch(
        r"runs 4/4 \(100%\), elapsed \d+:\d\d, eta 0:00 \(last: digits ls eps=0.1 clean seed=0\)", lines[-1]
    )
    # The background thread is gone once the block ends.
    assert not any(t.name == "labelsmooth-progress" for t in threading.enumerate())


def test_the_final_line_is_printed_when_the_block_raises():
    console = plain_console()
    with pytest.raises(KeyboardInterrupt), track(console, 5, interval=60) as shown:
        shown.advance(2)
        raise KeyboardInterrupt
    assert console.file.getvalue().splitlines()[-1].startswith("runs 2/5 (40%)")
    assert not any(t.name == "labelsmooth-progress" for t in threading.enumerate())


def test_on_a_terminal_the_rich_bar_is_kept():
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    with track(console, 3, interval=0.01) as shown:
        shown.advance(3, last="digits ce eps=0 clean seed=0")
    out = console.file.getvalue()
    assert "3/3" in out and "━" in out  # rich's MofN column and bar
    assert "a progress line every" not in out and "runs 3/3 (100%)" not in out


@pytest.mark.parametrize("interval", [0, -1, float("nan")])
def test_a_bad_interval_is_refused(interval):
    with (
        pytest.raises(ValueError, match="interval must be a positive number of seconds"),
        track(plain_console(), 1, interval=interval),
    ):
        pass


def test_status_prints_its_message_once_off_a_terminal():
    console = plain_console()
    with status(console, "loading digits ..."):
        pass
    assert console.file.getvalue() == "loading digits ...\n"


def test_study_with_output_redirected_to_a_file_prints_progress_lines(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    log = tmp_path / "log.txt"
    cmd = [
        sys.executable,
        "-m",
        "labelsmooth",
        "study",
        "--datasets",
        "breast_cancer",
        "--methods",
        "ce,ls",
        "--eps",
        "0,0.1",
        "--noise",
        "0",
        "--seeds",
        "2",
        "--steps",
        "4",
        "--hidden",
        "16",
        "--lrs",  # one learning rate and the whole training split: exactly the 4 runs counted below
        "0.003",
        "--train-fractions",
        "1",
        "--workers",
        "1",
        "--no-report",
        "--out",
        str(tmp_path / "run"),
    ]
    with open(log, "w") as fh:
        res = subprocess.run(cmd, stdout=fh, stderr=subprocess.PIPE, text=True, timeout=300, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    text = log.read_text()
    assert "loading breast_cancer ..." in text
    assert "training 4 run(s); a progress line every 30 s" in text
    assert re.search(r"^runs 4/4 \(100%\), elapsed \d+:\d\d, eta 0:00 \(last: breast_cancer ", text, re.M), text
    assert "\x1b[" not in text  # no terminal control codes in a log file
