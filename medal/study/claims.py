"""Claims: which process trains which point of a sweep grid that several processes share.

Every sweep process walks the same grid in the same order. Before it trains a point it creates
`.NAME.claim` beside the run directory with O_CREAT|O_EXCL, which succeeds for exactly one
process, on one machine and on a shared filesystem (NFS, Lustre, GPFS) alike. The file says who
holds the point (host, pids, start time, a random token); its mtime is the holder's heartbeat,
refreshed by a background thread while the point trains.

A claim is stale, and another process takes it over, when
- its holder ran on this host (same host name, kernel boot and pid namespace) and none of its
  processes is alive any more: found at once; or
- its heartbeat is older than the timeout: a process on another machine that died, or one that
  lost the filesystem (this also covers a pid reused by an unrelated process).

Two processes may find the same stale claim. Each renames it to a name of its own first: only
one rename of a file succeeds, so only one of them goes on to create a fresh claim (O_EXCL again).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from medal.runtime.log import warn


def _host_id() -> str:
    """Where a pid names the same process: the host, this boot of its kernel, the pid namespace (containers)."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:  # not Linux: the host name alone
            pass
    return "/".join(parts)


HOST, HOST_ID = socket.gethostname(), _host_id()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs. A zombie does not: it has ended, and its parent (a sweep killed
    with SIGKILL leaves its workers to init, which in a container may never reap them) has not reaped it."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there; leave it to the heartbeat
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # not Linux, or gone this instant
        return True
    return state not in ("Z", "X")


@dataclass(frozen=True)
class Holder:
    """What a claim file says about the process holding it, and how old its heartbeat is."""

    host: str
    host_id: str
    pids: tuple[int, ...]
    started: str
    token: str
    age: float  # seconds since the last heartbeat

    def __str__(self) -> str:
        return f"{self.host} pid {self.pids[0]}" if self.pids else "an unreadable claim"

    def stale(self, timeout: float) -> str | None:
        """Why this claim may be taken over, or None while its holder looks alive."""
        if self.host_id == HOST_ID and not any(pid_alive(p) for p in self.pids):
            return "its process is gone"
        if self.age > timeout:
            return f"no heartbeat for {self.age:.0f}s (--claim-timeout {timeout:g})"
        return None


def read_holder(path: Path) -> Holder | None:
    """The claim at `path`, or None when there is none."""
    try:
        with open(path) as f:
            stat, text = os.fstat(f.fileno()), f.read()
    except FileNotFoundError:
        return None
    age = time.time() - stat.st_mtime
    try:
        info = json.loads(text)
        return Holder(info["host"], info["host_id"], tuple(info["pids"]), info["started"], info["token"], age)
    except (ValueError, KeyError, TypeError):  # being written this very moment, or damaged: the heartbeat decides
        return Holder("?", "?", (), "?", f"unreadable-{stat.st_ino}-{stat.st_mtime_ns}-{len(text)}", age)


@dataclass
class Claim:
    """A claim this process holds. A daemon thread refreshes its heartbeat until `release()`."""

    path: Path
    info: dict
    beat_s: float
    took_over: str | None = None  # whom it was taken over from, and why
    lost: bool = False  # another process took it over (this one's heartbeat had stopped for too long)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()

    def mine(self) -> bool:
        holder = read_holder(self.path)
        return holder is not None and holder.token == self.info["token"]

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            if not self.mine():
                self.lost = True
                warn(f"another process took over {self.path} (this one's heartbeat had stopped for longer than "
                     f"its --claim-timeout)")
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                pass  # taken over this instant: the next beat says so

    def add_pid(self, pid: int) -> None:
        """A child process trains the point: on this host the claim stays live while either process runs."""
        self.info["pids"].append(pid)
        _write(self.path, self.info, exclusive=False)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.mine():
            self.path.unlink(missing_ok=True)


def _write(path: Path, info: dict, exclusive: bool) -> bool:
    """Create the claim file (False if one exists), or rewrite our own in place of the old one."""
    if exclusive:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info))
        return True
    tmp = path.with_name(f"{path.name}.{info['token']}.tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)
    return True


def _create(path: Path, timeout: float, took_over: str | None = None) -> Claim | None:
    info = {"host": HOST, "host_id": HOST_ID, "pids": [os.getpid()], "token": uuid.uuid4().hex,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if not _write(path, info, exclusive=True):
        return None
    return Claim(path, info, beat_s=min(30.0, timeout / 10), took_over=took_over)


def remove_stale(path: Path, stale: Holder) -> bool:
    """Remove the claim judged stale, unless another process got there first; True when this one did."""
    grave = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, grave)  # of all processes renaming this file, one succeeds
    except FileNotFoundError:
        return False
    moved = read_holder(grave)
    if moved is None or moved.token != stale.token:  # a fresh claim had replaced the stale one: put it back
        os.rename(grave, path)
        return False
    grave.unlink()
    return True


def clear_stale(path: Path, timeout: float) -> bool:
    """Remove the claim at `path` if its holder is gone; True when no claim is left there.

    For a point that is finished: a sweep killed after its run was published never released its claim."""
    holder = read_holder(path)
    if holder is None:
        return True
    return holder.stale(timeout) is not None and remove_stale(path, holder)


def acquire(path: Path, timeout: float) -> Claim | None:
    """Claim `path` for this process, taking over a stale claim; None while another process holds it."""
    claim = _create(path, timeout)
    if claim is not None:
        return claim
    holder = read_holder(path)
    if holder is None:  # released since
        return _create(path, timeout)
    reason = holder.stale(timeout)
    if reason is None or not remove_stale(path, holder):
        return None
    return _create(path, timeout, took_over=f"{holder}: {reason}")
