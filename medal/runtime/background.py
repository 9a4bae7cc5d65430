"""One write at a time on a thread of its own, so that a long loop never waits for the disk.

The loop `offer`s each write as a function `prepare` that runs at once on the loop's thread (the
quick part: copy what must not change under the writer into memory) and returns the slow part,
which a thread then runs. A write offered while the previous one is still running is skipped, not
waited for: `prepare` is not even called.
`finish` writes the last skipped one, so the loop's final state always reaches the disk; leaving the
`with` block by an exception only waits for the running write. A write that failed raises its error
on the loop's thread, at the next `offer` or at `finish`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Write = Callable[[], None]


@dataclass
class WriterStats:
    """What a writer cost the loop's thread: `seconds` in `offer`, `run_here` and `finish` (the copies, the last
    wait); `finish_seconds`, the part in `finish`, is paid once a loop, not once an epoch."""

    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    finish_seconds: float = 0.0


class BackgroundWriter:
    def __init__(self) -> None:
        self.stats = WriterStats()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._skipped: Callable[[], Write] | None = None

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def offer(self, prepare: Callable[[], Write]) -> bool:
        """Start prepare()'s write on the thread, or skip it while the previous one runs; True when started."""
        start = time.perf_counter()
        try:
            self._raise_error()
            if self.busy():
                self._skipped = prepare
                self.stats.skipped += 1
                return False
            self._skipped = None
            self._start(prepare())
            return True
        finally:
            self.stats.seconds += time.perf_counter() - start

    def run_here(self, work: Callable[[], T]) -> T:
        """work() on the loop's thread, counted in `stats.seconds`: a copy the writes need even when skipped."""
        start = time.perf_counter()
        try:
            return work()
        finally:
            self.stats.seconds += time.perf_counter() - start

    def finish(self) -> None:
        """Wait for the running write, then write the last skipped one: everything offered is on the disk."""
        start = time.perf_counter()
        try:
            self._wait()
            if self._skipped is not None:
                self.stats.skipped -= 1
                self._start(self._skipped())
                self._skipped = None
                self._wait()
        finally:
            self.stats.seconds += time.perf_counter() - start
            self.stats.finish_seconds += time.perf_counter() - start

    def _start(self, write: Write) -> None:
        def run() -> None:
            try:
                write()
            except BaseException as exc:  # handed to the loop's thread: a thread's error would only be printed
                self._error = exc

        self.stats.written += 1
        # Not a daemon: should the loop's thread stop waiting (a second Ctrl-C), the interpreter still lets the
        # write finish before it exits.
        self._thread = threading.Thread(target=run, name="medal-writer")
        self._thread.start()

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.finish()
        finally:  # also when a signal ends `finish`: the caller reports the epochs that are on the disk
            if self._thread is not None:
                self._thread.join()  # a skipped write's state is one the loop has moved past: not written
