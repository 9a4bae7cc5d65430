"""One builder per cache key: an exclusive lock file beside the cache's partial folder.

The lock is an `flock` on `.KEY.zarr.lock`, holding the builder's host and pid. The kernel
drops an flock when its process dies, however it dies (kill -9 included), so a lock left by a
dead process is stale by construction: the next builder simply takes it. A second live
builder finds it taken and stops with one line naming the holder.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from medal.errors import MedalError


class CacheLock:
    """Exclusive, non-blocking; `release()` removes the file while still holding it."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = Path(path), key
        self._fd: int | None = None

    def acquire(self) -> "CacheLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise MedalError(f"cache {self.key} is being built right now by {holder} (lock {self.path}); "
                                 f"wait for that command to finish.") from None
            if self._same_file(fd):  # not a file a finishing builder had just removed
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
