"""Sweep workers: processes that stay, each training many points of `medal sweep --jobs N` in turn.

Starting Python, torch and timm takes seconds; a grid of short points paid that once per point
when each point had a `medal distill` process of its own. A worker (`medal sweep-worker`) is
started once per --jobs slot (or --gpus GPU) and runs one `medal distill` command line after
another in-process, through the CLI's own entry point: `run_distill` sets the deterministic
flags and seeds every generator itself before it builds anything, so a point computes what a
fresh `medal distill` would.

The sweep process keeps the claims (medal.study.claims); a worker only trains. It reads one JSON
line per point on stdin, {"args": [...], "log": PATH}, sends everything the point prints to
PATH, and answers {"exit": CODE} on its stdout, CODE being what `medal distill` would exit with.

A worker never outlives its sweep, however the sweep dies (SIGKILL included): on Linux the
kernel kills it when the sweep's process ends (prctl PR_SET_PDEATHSIG), and on any system its
stdin reaching end-of-file while a point is pending means the same. A sweep closes a worker's
stdin only when the worker is idle, to let it exit. A worker killed mid-point leaves what a
killed `medal distill` leaves: a checkpoint the next sweep resumes, a claim whose processes are gone.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TextIO

PR_SET_PDEATHSIG = 1  # linux/prctl.h
INTERRUPTED = (130, 143)  # `medal distill` stopped by SIGINT or SIGTERM: the worker stops too


def worker_command() -> list[str]:
    """The command line that starts a worker (a hidden command of medal.cli, which hands `serve` its runner)."""
    return [sys.executable, "-m", "medal", "sweep-worker"]


class Worker:
    """A worker process as the sweep sees it. Start it from the thread that runs the sweep:
    PR_SET_PDEATHSIG fires when that thread ends."""

    def __init__(self, gpu: str | None = None):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None
        self.proc = subprocess.Popen(worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self._answers: queue.Queue[int | None] = queue.Queue()
        threading.Thread(target=self._listen, name=f"sweep worker {self.proc.pid}", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _listen(self) -> None:
        for line in self.proc.stdout:
            self._answers.put(json.loads(line)["exit"])
        self._answers.put(None)  # the worker ended

    def train(self, args: list[str], log: Path) -> None:
        """Send it `medal ARGS`, its output to `log`; `result()` says when it is over."""
        try:
            self.proc.stdin.write(json.dumps({"args": args, "log": str(log)}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:  # it died: result() gives its exit code
            pass

    def result(self) -> int | None:
        """The exit code of the point it trains once it is over (the worker's own if it died); None before."""
        try:
            code = self._answers.get_nowait()
        except queue.Empty:
            return None
        return self.proc.wait() if code is None else code

    def stop(self) -> None:
        """End it now, mid-point or not (SIGTERM: a point in training stops as `medal distill` does)."""
        self.proc.terminate()
        self.proc.wait()

    def close(self) -> None:
        """Let an idle worker exit (end-of-file on its stdin) and wait for it."""
        try:
            self.proc.stdin.close()
        except OSError:  # it is gone already
            pass
        self.proc.wait()


# --- inside the worker process ----------------------------------------------------------------------------


def serve(run_point: Callable[[list[str]], int]) -> int:
    """Train the points read on stdin one after another until stdin ends; returns the exit code.

    `run_point(args)` runs `medal ARGS` in this process and returns its exit code (medal.cli's `run_in_process`)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the sweep stops its workers
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # between points, stray output goes where the sweep's messages go, not into the answers
    inbox = Inbox()
    threading.Thread(target=inbox.read, args=(sys.stdin,), name="sweep inbox", daemon=True).start()
    while (job := inbox.next()) is not None:
        with output_to(Path(job["log"])):
            code = run_point(job["args"])
        release_memory()
        inbox.done()
        try:
            answers.write(json.dumps({"exit": code}) + "\n")
        except OSError:  # the sweep is gone
            return code
        if code in INTERRUPTED:
            return code
    return 0


def die_with_parent() -> None:
    """Linux: ask the kernel for SIGKILL when the process (strictly: the thread) that started this one ends.

    If the sweep died before this call, stdin is at end-of-file already: `Inbox` ends the worker."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: stdin's end-of-file still ends the worker
        pass


class Inbox:
    """The points sent on stdin, read by a thread so that end-of-file is seen while a point trains."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[dict | None] = queue.Queue()
        self._pending = 0  # points received and not yet answered
        self._lock = threading.Lock()

    def read(self, stream: TextIO) -> None:
        for line in stream:
            with self._lock:
                self._pending += 1
            self._jobs.put(json.loads(line))
        self.closed()

    def closed(self) -> None:
        """stdin ended: the sweep lets this idle worker go, or it died (a point was pending: end at once)."""
        with self._lock:
            if self._pending:
                os._exit(1)  # from this thread, on any system
        self._jobs.put(None)

    def next(self) -> dict | None:
        return self._jobs.get()

    def done(self) -> None:
        with self._lock:
            self._pending -= 1


@contextmanager
def output_to(log: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at `log`: print, log(), tqdm and C libraries alike write there."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


def release_memory() -> None:
    """Give back what the last point held, so the next one finds the memory a fresh process would
    (`--max-memory`'s default is a share of what is free), and forget compiled graphs (`--compile`)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()

