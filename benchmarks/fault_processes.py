"""A command the fault matrix starts, and every process that command starts in turn, however they detach.

Each command gets an environment variable of its own (FAULT_MATRIX_RUN=<random id>) that every
process it starts inherits, so /proc finds them all, wherever they were reparented and whatever
their session. A process group would not do: torchrun starts each rank in a session of its own,
and SIGKILL to torchrun's group leaves the ranks training. Linux only (/proc).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARKER = "FAULT_MATRIX_RUN"


class Started:
    """`python ARGV` with its output in `log`, and the processes it started."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path):
        self.marker = f"{MARKER}={uuid.uuid4().hex}"
        key, value = self.marker.split("=")
        with open(log, "w") as f:
            self.popen = subprocess.Popen([sys.executable, *argv], env={**env, key: value}, stdout=f,
                                          stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)

    def processes(self) -> list[int]:
        """Every live process of the command, itself included (zombies, waiting to be reaped, are not live)."""
        mark = self.marker.encode()
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if mark not in environ.read_bytes().split(b"\0"):
                    continue
                state = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):  # gone meanwhile, or not ours to read
                continue
            if state not in "ZX":
                found.append(int(environ.parent.name))
        return found

    def kill_all(self) -> None:
        """Every process of the command dies at once, as when a job or a machine does: all are stopped first
        (so that none starts another or writes a byte more), then killed."""
        stopped: set[int] = set()
        while new := set(self.processes()) - stopped:
            send(new, signal.SIGSTOP)
            stopped |= new
        send(stopped, signal.SIGKILL)
        while self.processes():
            time.sleep(0.01)
        self.popen.wait()

    def settle(self, grace_s: float, problems: list[str], what: str) -> None:
        """After the command exited, the processes it started must follow within `grace_s` (then they are killed)."""
        deadline = time.monotonic() + grace_s
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        if left:
            problems.append(f"{len(left)} process(es) still running {grace_s:g}s after {what} exited")
            self.kill_all()

    def interrupt(self, sig: signal.Signals, stop_s: float, grace_s: float, problems: list[str]) -> int:
        """SIGKILL to every process of the command; SIGTERM to the command alone, which then has `stop_s` to
        exit. Returns its exit code once no process of it is left."""
        if sig == signal.SIGKILL:
            self.kill_all()
            return self.popen.returncode
        self.popen.send_signal(sig)
        try:
            code = self.popen.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            problems.append(f"still running {stop_s:g}s after {sig.name}")
            self.kill_all()
            return self.popen.returncode
        self.settle(grace_s, problems, f"the {sig.name}ed command")
        return code


def send(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
