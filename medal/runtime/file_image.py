"""A file's bytes in memory, reused write after write, and written to the disk without the CPU copying them.

Why: a checkpoint is the state copied to CPU memory on the training thread, then written by a thread beside it.
A plain write copies the bytes once more, into the kernel's page cache, and on a CPU whose cores all train that
copy cost the epoch about twice its own time (benchmarks/RESULTS.md, "Fixed costs"). Here torch.save writes the
state into page-aligned anonymous memory (`save_torch`: the one copy, on the calling thread), and `write_to` hands
that memory to the disk with O_DIRECT, which the disk reads itself: 0.023 s of the writer's CPU for a 270 MiB
checkpoint against 0.040 s through the page cache, and a resnet50_28 epoch 1.038x a bare loop against 1.054x
(CI machine, ext4; benchmarks/RESULTS.md). Where O_DIRECT is missing (macOS, Windows) or refused (tmpfs before
Linux 6.6, some FUSE and network file systems) it writes through the page cache.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path
from typing import Any

import torch

from medal.runtime.io import zip_crc

ALIGN = 4096  # O_DIRECT's alignment of memory, offset and length: 4 KiB covers 512-byte and 4 KiB sectors
CHUNK = 64 << 20  # bytes a write call, a multiple of ALIGN


class FileImage:
    """The bytes of one file at a time, in memory that the next file reuses (its pages stay mapped: a copy into
    new pages takes about twice as long, `medal.pipeline.checkpoint.StateCopy`). A writable, seekable file
    object for torch.save."""

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, ALIGN)  # anonymous: page-aligned, as O_DIRECT needs
        self.size = 0  # the file's bytes
        self._at = 0
        self.direct = hasattr(os, "O_DIRECT")  # False after the file system refused it once

    def save_torch(self, obj: Any, crc: bool = True) -> None:
        """The image becomes torch.save(obj): every tensor copied once, straight from its memory."""
        self.size = self._at = 0
        self._reserve(saved_size(obj))  # the first time: mapped once, not grown step by step (0.19 s against 1.08 s)
        with zip_crc(crc):
            torch.save(obj, self)

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")
        end = self._at + len(data)
        self._reserve(end)
        self._memory[self._at:end] = data
        self._at, self.size = end, max(self.size, end)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._at = offset + {os.SEEK_SET: 0, os.SEEK_CUR: self._at, os.SEEK_END: self.size}[whence]
        return self._at

    def tell(self) -> int:
        return self._at

    def flush(self) -> None:
        """Nothing to flush: torch.save calls it."""

    def write_to(self, path: Path) -> None:
        """Write the image into `path` from its start, over what the file holds (medal.runtime.io.atomic recycles
        the file a write discards), and cut the file where the image ends. Not durable until fsync'd."""
        padded = -(-self.size // ALIGN) * ALIGN  # O_DIRECT writes whole blocks; the file is cut after
        self._reserve(padded)
        self._memory[self.size:padded] = bytes(padded - self.size)
        if self.direct:
            try:
                self._write(path, padded, os.O_DIRECT)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False  # this file system takes no O_DIRECT: the page cache from now on
        self._write(path, padded, 0)

    def _write(self, path: Path, length: int, flags: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0) | flags, 0o644)
        try:
            with memoryview(self._memory) as view:
                done = 0
                while done < length:
                    done += os.write(fd, view[done:min(length, done + CHUNK)])
            os.ftruncate(fd, self.size)
        finally:
            os.close(fd)

    def _reserve(self, size: int) -> None:
        """Room for `size` bytes: a new mapping, at least half as large again, the bytes so far copied into it
        (a mapping cannot grow in place: a shared anonymous one grown with mremap faults past its first size)."""
        if size <= len(self._memory):
            return
        bigger = mmap.mmap(-1, -(-max(size, len(self._memory) * 3 // 2) // ALIGN) * ALIGN)
        with memoryview(self._memory) as old:
            bigger[:self.size] = old[:self.size]
        self._memory.close()
        self._memory = bigger


def saved_size(obj: Any) -> int:
    """About the bytes torch.save(obj) writes, a little more: each tensor's storage once, a zip record's headers
    and alignment each, 1 MiB for the pickle."""
    storages: dict[int, int] = {}

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(obj)
    return sum(storages.values()) + 256 * len(storages) + (1 << 20)
