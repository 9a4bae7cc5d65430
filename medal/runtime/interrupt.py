"""Ctrl-C and SIGTERM during a long run: stop, keep what is finished, say how to go on.

Python turns Ctrl-C (SIGINT) into KeyboardInterrupt; `sigterm_raises` does the same for
SIGTERM (what `kill`, Slurm's time limit and a shutdown send) while training runs, so both
unwind through the same code. The run then raises `Interrupted`, which the CLI prints as its
one line and exits with the shell's code for the signal: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt: no `except Exception` swallows it)."""


class Interrupted(Exception):
    """A run stopped by a signal, its progress kept: `str()` is the line for the user."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def exit_code(exc: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process a signal ended."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated; outside it, SIGTERM ends the process as usual."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
