"""How a study shows its progress: rich's live bar on a terminal, plain lines everywhere else.

A live bar redraws one line in place, which only a terminal can show; written to a file or a pipe
(``make study > log``, CI) it shows nothing until the end, so a long grid looks hung. Off a terminal
the progress is therefore a plain line (runs done of the total, elapsed time, estimated time left)
printed at a steady interval from a background thread, whether or not a run has just finished, and
once more at the end.

The choice follows ``console.is_terminal``, so rich's own overrides (``FORCE_TERMINAL``, ``TTY_COMPATIBLE``)
apply.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["INTERVAL_S", "Tracker", "format_duration", "progress_line", "status", "track"]

#: Seconds between two progress lines when the output is not a terminal.
INTERVAL_S = 30.0


class Tracker(Protocol):
    """What the training loop reports to: finished runs and messages between progress lines."""

    def advance(self, runs: int, last: str = "") -> None:
        """Count ``runs`` more finished runs; ``last`` describes the training that finished."""

    def print(self, message: str) -> None:
        """Print a message (rich markup allowed) without disturbing the progress display."""


def format_duration(seconds: float) -> str:
    """``seconds`` as ``M:SS`` or ``H:MM:SS``.

    Example:
        >>> format_duration(75.4), format_duration(3 * 3600 + 62)
        ('1:15', '3:01:02')
    """
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(done: int, total: int, elapsed: float, last: str = "") -> str:
    """One plain progress line: runs done of the total, elapsed time and estimated time left.

    The estimate assumes the remaining runs take as long on average as the finished ones; the runner
    starts the longest trainings first, so early estimates err on the long side.

    Args:
        done: finished runs.
        total: runs to train in this invocation.
        elapsed: seconds since training started.
        last: the training that finished last, if any.

    Example:
        >>> progress_line(10, 40, 60.0)
        'runs 10/40 (25%), elapsed 1:00, eta 3:00'
        >>> progress_line(0, 40, 5.0)
        'runs 0/40 (0%), elapsed 0:05, eta unknown'
    """
    share = done / total if total else 1.0
    eta = format_duration(elapsed / done * (total - done)) if done else "unknown"
    text = f"runs {done}/{total} ({share:.0%}), elapsed {format_duration(elapsed)}, eta {eta}"
    return f"{text} (last: {last})" if last else text


class _Lines:
    """Plain progress lines every ``interval`` seconds, from a daemon thread, and one at the end."""

    def __init__(self, console: Console, total: int, interval: float, clock: Callable[[], float]) -> None:
        self.console, self.total, self.interval, self.clock = console, total, interval, clock
        self.done, self.last = 0, ""
        self.start = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="labelsmooth-progress", daemon=True)

    def _line(self) -> str:
        with self._lock:
            done, last = self.done, self.last
        return progress_line(done, self.total, self.clock() - self.start, last)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.console.print(self._line(), markup=False, highlight=False)

    def advance(self, runs: int, last: str = "") -> None:
        with self._lock:
            self.done += runs
            self.last = last

    def print(self, message: str) -> None:
        self.console.print(message)

    def open(self) -> None:
        self.console.print(
            f"training {self.total} run(s); a progress line every {self.interval:g} s",
            markup=False,
            highlight=False,
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.console.print(self._line(), markup=False, highlight=False)


class _Bar:
    """rich's live progress bar (a terminal only)."""

    def __init__(self, console: Console, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
        self.progress = Progress(*columns, console=console, transient=False)
        self.task = self.progress.add_task("runs", total=total)

    def advance(self, runs: int, last: str = "") -> None:
        self.progress.update(self.task, advance=runs, description=f"runs (last: {last})" if last else "runs")

    def print(self, message: str) -> None:
        self.progress.console.print(message)


@contextlib.contextmanager
def track(
    console: Console, total: int, *, interval: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic
) -> Iterator[Tracker]:
    """Show the progress of ``total`` runs for the duration of the ``with`` block.

    Args:
        console: where to show it; a terminal gets rich's live bar, anything else plain lines.
        total: the number of runs to train.
        interval: seconds between two plain lines (ignored on a terminal).
        clock: the time source, in seconds (for tests).

    Yields:
        A :class:`Tracker`: call ``advance`` as runs finish and ``print`` for messages.

    Raises:
        ValueError: ``interval`` is not a positive number.

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> console = Console(file=io.StringIO())  # not a terminal: plain lines
        >>> with track(console, 4) as progress:
        ...     progress.advance(4, last="digits ce seed=0")
        >>> console.file.getvalue().splitlines()[-1].startswith("runs 4/4 (100%), elapsed 0:00, eta 0:00")
        True
    """
    if not interval > 0:
        raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
    if console.is_terminal:
        bar = _Bar(console, total)
        with bar.progress:
            yield bar
        return
    lines = _Lines(console, total, interval, clock)
    lines.open()
    try:
        yield lines
    finally:
        lines.close()


def status(console: Console, message: str) -> contextlib.AbstractContextManager[object]:
    """A spinner with ``message`` on a terminal; elsewhere the message printed once as a line.

    Args:
        console: where to show it.
        message: what is being done (``"loading digits ..."``).

    Returns:
        A context manager for the duration of the work.
    """
    if console.is_terminal:
        return console.status(message)
    console.print(message, markup=False, highlight=False)
    return contextlib.nullcontext()
