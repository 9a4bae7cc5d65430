"""One write at a time on a thread of its own, so that a long loop never waits for the disk.

The loop `offer`s each write as a function `prepare` that runs at once on the loop's thread (the
quick part: copy what must not change under the writer) and returns the slow part, which a thread
then runs. A write offered while the previous one is still running is skipped, not waited for:
`prepare` is not even called. `finish` writes the last one offered, so the loop's final state
always reaches the disk; leaving the `with` block by an exception only waits for the running write.
A write that failed raises its error on the loop's thread, at the next `offer` or at `finish`.

The thread runs at idle priority where the OS has one (Linux's SCHED_IDLE): it uses the cores the
loop leaves idle instead of a share of the loop's. Training on the CPU keeps every core busy, and a
write at normal priority slowed each epoch by about its own CPU time (a ResNet-50 at 28 px on 2
cores: 1.13x the bare loop, against 0.96x at idle priority; benchmarks/RESULTS.md "Fixed costs").
A write starved for longer than an epoch only means that the next checkpoint is skipped. At
`finish` the loop has nothing left to do and its cores are free, so the write under way normally
completes at once; but other processes may keep the cores busy, and an idle write must not be
waited for without end. A write still running twice as long as the last one took (at least
`PATIENCE` seconds) is called off (it stops at its next `check_called_off`, between chunks, leaving
nothing behind: medal.runtime.io), and `finish` writes the last state on the loop's own thread, at
the loop's priority.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Write = Callable[[], None]

PATIENCE = 1.0  # seconds: the least a write under way is waited for at `finish`, before it is called off
_write = threading.local()  # on a writer's thread: `called_off`, the Event that `finish` sets


class CalledOff(Exception):
    """Raised inside a background write that `finish` took over."""


def check_called_off() -> None:
    """Raise CalledOff when the current thread's write has been taken over (a no-op on any other thread)."""
    event = getattr(_write, "called_off", None)
    if event is not None and event.is_set():
        raise CalledOff


def idle_priority() -> None:
    """Put the calling thread at idle priority (Linux's SCHED_IDLE; elsewhere it stays as it is)."""
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # pid 0: this thread only
        except OSError:  # a sandbox that forbids it: the write runs at normal priority
            pass


@dataclass
class WriterStats:
    """Writes completed and skipped, and what they cost the loop's thread: `seconds` in `offer`, `run_here`
    and `finish` (the copies, and the last write, which `finish` does on that thread)."""

    written: int = 0
    skipped: int = 0
    seconds: float = 0.0


class BackgroundWriter:
    def __init__(self) -> None:
        self.stats = WriterStats()
        self._thread: threading.Thread | None = None
        self._running: Write | None = None  # the write on the thread, until it completed
        self._started = 0.0  # when it started (time.monotonic)
        self._took = 0.0  # seconds the last completed write took
        self._called_off = threading.Event()
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
        """Make the last write offered durable: wait for the running one (or call it off when it is starved), then
        write the last one skipped, here."""
        start = time.perf_counter()
        try:
            if self._thread is not None:
                self._thread.join(max(0.0, self._started + max(PATIENCE, 2 * self._took) - time.monotonic()))
                self._called_off.set()  # a no-op for a write that completed
            self._wait()
            if self._skipped is not None:
                self.stats.skipped -= 1
                last, self._skipped = self._skipped(), None
            else:
                last, self._running = self._running, None  # called off before it completed, or None
            if last is not None:
                last()
                self.stats.written += 1
        finally:
            self.stats.seconds += time.perf_counter() - start

    def _start(self, write: Write) -> None:
        called_off = self._called_off = threading.Event()
        self._running, self._started = write, time.monotonic()

        def run() -> None:
            _write.called_off = called_off
            idle_priority()
            try:
                write()
                self._running, self._took = None, time.monotonic() - self._started
                self.stats.written += 1
            except CalledOff:
                pass  # `finish` writes it again
            except BaseException as exc:  # handed to the loop's thread: a thread's error would only be printed
                self._running = None
                self._error = exc

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
