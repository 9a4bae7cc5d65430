"""One process at a time: an exclusive flock on a file that names its holder.

Guards a run folder (`medal distill`) and a cache key (`medal cache-teacher`). The kernel drops
an flock when its process ends, however it ends (kill -9 included), so a lock is never left
stale: a rerun after a crash just takes it. The file holds the holder's pid and host, for the
one-line message a second process gets. Linux and macOS only (fcntl), like the rest of medal's
multi-process code.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from medal.runtime.errors import MedalError


class FileLock:
    """Taken at construction (or MedalError `busy`, with {holder} filled in); release() removes the file."""

    def __init__(self, path: Path, busy: str):
        self.path = Path(path)
        for _ in range(10):  # another process may remove the file between our open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise MedalError(busy.format(holder=holder)) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # locked a file its last holder had just removed: take the new one
        else:
            raise MedalError(f"could not lock {self.path}; run the command again.")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):
            self.path.unlink()
        os.close(self.fd)  # closing drops the flock
        self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
