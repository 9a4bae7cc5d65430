"""glibc's malloc keeps the memory a training step frees (medal.runtime.allocator).

Checked against glibc's own account (`mallinfo2`) in fresh interpreters, since the thresholds are the
process's: eight 16 MiB blocks, allocated then freed, come from the heap and stay there after
`keep_freed_memory`, or after `medal distill` has run, where glibc's default gives them back to the OS.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_npz

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

PROBE = """
import ctypes, json, sys
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype, libc.malloc.restype, libc.malloc.argtypes = Info, ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def cycle() -> dict:
    # what a training step does to the heap: large blocks allocated, then all freed
    before = libc.mallinfo2()
    pointers = [libc.malloc(16 << 20) for _ in range(8)]
    during = libc.mallinfo2()
    for pointer in pointers:
        libc.free(pointer)
    after = libc.mallinfo2()
    return {"mmapped": during.hblkhd - before.hblkhd, "freed_kept": after.fordblks - during.fordblks}

first, second = cycle(), cycle()
exec(sys.argv[1])
print(json.dumps({"first": first, "second": second, "after": cycle()}))
"""

MIB128 = 8 * 16 << 20


def probe(code: str) -> dict:
    import json

    proc = subprocess.run([sys.executable, "-c", PROBE, code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    got = probe("from medal.runtime.allocator import keep_freed_memory; assert keep_freed_memory()")
    # glibc's default, the reference: blocks of their own from the OS at first, then (the threshold raised by
    # their free) from the heap, which gives them back to the OS when they are freed
    assert got["first"]["mmapped"] >= MIB128 and got["second"]["freed_kept"] < MIB128, got
    assert got["after"]["mmapped"] == 0, "still mmapped: the threshold was not set"
    assert got["after"]["freed_kept"] >= MIB128, "the freed blocks went back to the OS: the heap was trimmed"


def test_distill_keeps_freed_memory(tmp_path):
    make_npz(tmp_path / "data", "bloodmnist", {"train": 8, "val": 8, "test": 8})
    run = ("from medal.pipeline.distill import DistillConfig, run_distill; "
           f"run_distill(DistillConfig(dataset='bloodmnist', root={str(tmp_path / 'data')!r}, student='resnet18_28', "
           f"image_size=28, epochs=1, batch_size=4, alpha=1.0, device='cpu', out={str(tmp_path / 'run')!r}))")
    got = probe(run)
    assert got["after"]["mmapped"] == 0 and got["after"]["freed_kept"] >= MIB128, got
