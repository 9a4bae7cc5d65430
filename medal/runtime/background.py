"""One write at a time on a thread of its own, so that a long loop never waits for the disk.

The loop `offer`s each write as a function `prepare` that runs at once on the loop's thread (the
quick part: copy what must not change under the writer) and returns the slow part, which a thread
then runs. A write offered while the previous one is still running is skipped, not waited for:
`prepare` is not even called. `finish` writes the last skipped one, so the loop's final state
always reaches the disk; leaving the `with` block by an exception only waits for the running write.
A write that failed raises its error on the loop's thread, at the next `offer` or at `finish`.

Priority. Training on the CPU keeps every core busy, and a write at normal priority slowed each epoch
by more than its own CPU time (a ResNet-50 at 28 px on 2 cores: 1.10-1.16x the bare loop, against
1.00x without writes; benchmarks/RESULTS.md "Fixed costs"). So a write starts at idle priority where
the OS has one (Linux's SCHED_IDLE): it takes only the CPU the loop leaves idle. But other processes
may keep every core busy, and then an idle write gets no CPU at all. A write still running
`patience()` after its start, at an `offer` or at `finish`, is therefore starved: it is called off
(it stops at its next `check_called_off`, leaving nothing behind: medal.runtime.io) and the same
write starts again at normal priority, as does every later write of this writer. A called-off write
never commits a file once the write that replaces it has started (medal.runtime.io.atomic checks
under a lock), so the files on the disk never go back to an older state.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
Write = Callable[[], None]

PATIENCE = 1.0  # seconds: the least time an idle write is given before it counts as starved
_thread_write = threading.local()  # on a writer's thread: `called_off`, the Event set when it is replaced


class CalledOff(Exception):
    """Raised inside a background write that was called off (a normal-priority write took it over)."""


def check_called_off() -> None:
    """Raise CalledOff when the current thread's write has been called off (a no-op on any other thread)."""
    event = getattr(_thread_write, "called_off", None)
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
    """Writes completed, skipped and called off (starved), and what they cost the loop's thread: `seconds` in
    `offer`, `run_here` and `finish` (the copies, the wait for the last write)."""

    written: int = 0
    skipped: int = 0
    called_off: int = 0
    seconds: float = 0.0


@dataclass
class _Job:
    write: Write
    idle: bool
    started: float = field(default_factory=time.monotonic)
    called_off: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class BackgroundWriter:
    def __init__(self) -> None:
        self.stats = WriterStats()
        self._job: _Job | None = None
        self._idle = True  # until a write starves: from then on every write runs at normal priority
        self._took = 0.0  # seconds the last completed write took
        self._error: BaseException | None = None
        self._skipped: Callable[[], Write] | None = None

    def busy(self) -> bool:
        return self._job is not None and self._job.thread.is_alive()

    def offer(self, prepare: Callable[[], Write]) -> bool:
        """Start prepare()'s write on the thread, or skip it while the previous one runs; True when started."""
        start = time.perf_counter()
        try:
            self._raise_error()
            if self.busy():
                self._skipped = prepare
                self.stats.skipped += 1
                if self._starved():
                    self._take_over()
                return False
            self._skipped = None
            self._start(prepare(), idle=self._idle)
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
        """Wait for the running write (taking it over when it starves), then write the last skipped one:
        everything offered is on the disk."""
        start = time.perf_counter()
        try:
            self._settle()
            if self._skipped is not None:
                self.stats.skipped -= 1
                self._start(self._skipped(), idle=False)  # the loop is done: nothing to leave the cores to
                self._skipped = None
                self._settle()
        finally:
            self.stats.seconds += time.perf_counter() - start

    def patience(self) -> float:
        """How long an idle write may run before it counts as starved: twice the last write, at least PATIENCE."""
        return max(PATIENCE, 2 * self._took)

    def _starved(self) -> bool:
        job = self._job
        return job is not None and job.idle and time.monotonic() - job.started > self.patience()

    def _take_over(self) -> None:
        """Call off the starved idle write and start the same write again at normal priority."""
        job = self._job
        job.called_off.set()
        self.stats.called_off += 1
        self._idle = False
        self._start(job.write, idle=False)

    def _settle(self, raise_error: bool = True) -> None:
        """Wait for the running write; an idle one only until it starves, then for the one taking it over."""
        job = self._job
        if job is not None and job.idle:
            job.thread.join(max(0.0, job.started + self.patience() - time.monotonic()))
            if job.thread.is_alive():
                self._take_over()
        if self._job is not None:
            self._job.thread.join()
        if raise_error:
            self._raise_error()

    def _start(self, write: Write, idle: bool) -> None:
        job = self._job = _Job(write, idle)

        def run() -> None:
            _thread_write.called_off = job.called_off
            try:
                if idle:
                    idle_priority()
                write()
                self._took = time.monotonic() - job.started
                self.stats.written += 1
            except CalledOff:
                pass  # the write that took it over writes the same state
            except BaseException as exc:  # handed to the loop's thread: a thread's error would only be printed
                if not job.called_off.is_set():
                    self._error = exc

        # Not a daemon: should the loop's thread stop waiting (a second Ctrl-C), the interpreter still lets the
        # write finish before it exits. Started from the loop's thread, it starts at the loop's priority.
        job.thread = threading.Thread(target=run, name="medal-writer")
        job.thread.start()

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
            self._settle(raise_error=False)  # a skipped write's state is one the loop has moved past: not written
