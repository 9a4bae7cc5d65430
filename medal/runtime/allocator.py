"""Host memory that a training process keeps once it has it, instead of handing it back to the OS every step.

glibc's malloc sets its thresholds as a process goes: blocks above `M_MMAP_THRESHOLD` get memory of their
own from the OS, and free memory above `M_TRIM_THRESHOLD` at the top of the heap goes back to it. A training
step allocates and frees the same activations every step (torch's CPU allocator caches nothing). Where the
moving thresholds leave them depends on what the process allocated before (medal's checkpoint copies, some
hundred MB an epoch, or an earlier run), and they can end up going back to the OS and coming again, a page
fault for every 4 KiB. On this project's CI machine (a VM, where page faults are dear) a resnet50_28 epoch
of `medal distill` took 3.60-3.62 s with fixed thresholds against 3.95-4.23 s with glibc's, and the same
steps in a bare loop 3.23-3.28 s against 3.86-3.91 s (benchmarks/RESULTS.md, "Fixed costs").

Fixed thresholds keep what the steps use: blocks up to 32 MiB (glibc's ceiling for the dynamic threshold)
come from the heap, and the heap is not trimmed. The process then holds its high-water mark of host
memory until it exits, as PyTorch's CUDA caching allocator does on the GPU. `medal distill` does this
unless a split streams (medal.data.stream): there memory is what is short, and freed blocks that the heap
keeps, fragmented, raised the peak of tests/test_streaming.py's streamed run past its slack (+89 MB over
the same command on tiny data, against +37-56 MB with glibc's thresholds).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the largest it allows
TRIM_THRESHOLD = 2**31 - 1  # an int: mallopt's value is a C int; no trim below 2 GiB of free heap top

_kept = False


def keep_freed_memory() -> bool:
    """Fix glibc's thresholds for this process (once; later calls do nothing). False where there is no glibc
    (macOS, Windows, musl): nothing to do there."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc's own symbol: musl has a mallopt that ignores these
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept
