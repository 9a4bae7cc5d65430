"""Helpers shared by the benchmarks: device defaults, timing, FLOP counts, tables, RESULTS.md headers.

Every benchmark picks its sizes by device: the paper's on CUDA (224 px, ViT-B/14 teacher,
ResNet50 student, batch 128), tiny ones on CPU (28 px, ViT-S/14, batch 8) so that it runs
anywhere in a minute or two. `--quick` shrinks them further for smoke tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # medal, when it is not installed
from medal.models.teachers import load_teacher, save_random_teacher  # noqa: E402
from medal.runtime.device import resolve_device  # noqa: E402

RESULTS_TITLE = "# Benchmark results\n\nMeasured figures; every table says where and when it was measured.\n"
NUM_CLASSES = 8  # BloodMNIST's, the bundled dataset
H100_BF16_DENSE_TFLOPS = 989.0  # H100/H200 SXM dense bf16 tensor-core peak


Defaults = dict[str, tuple[object, object, object, object]]  # dest: (cuda, cuda --quick, cpu, cpu --quick)

SHARED_DEFAULTS: Defaults = {
    "image_size": (224, 224, 28, 28),
    "batch_size": (128, 128, 8, 4),
    "teacher": ("dinov2_vitb14", "dinov2_vitb14", "dinov2_vits14", "dinov2_vits14"),
}


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The flags every benchmark shares; those left at None are set by `resolve_defaults` per device."""
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--image-size", type=int, help="network input side, a multiple of 14 (the teacher's patch); "
                                                   "default 224 on CUDA, 28 on CPU")
    ap.add_argument("--batch-size", type=int, help="default 128 on CUDA, 8 on CPU")
    ap.add_argument("--teacher", help="default dinov2_vitb14 on CUDA, dinov2_vits14 on CPU (random weights: speed only)")
    ap.add_argument("--peak-tflops", type=float,
                    help=f"device peak for the roofline line (CUDA default {H100_BF16_DENSE_TFLOPS:g}, H100/H200 "
                         "dense bf16; CPU default: an fp32 matmul measured here)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU only: torch threads (default 1; on small shared machines idle pool threads spin and skew timings)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run")
    ap.add_argument("--append", type=Path, help="append the table, with a header, to this markdown file")


def resolve_defaults(args: argparse.Namespace, defaults: Defaults) -> torch.device:
    """Pick the device, then fill every flag left at None from `defaults` for that device and --quick."""
    device = resolve_device(args.device)
    column = (0 if device.type == "cuda" else 2) + int(args.quick)
    for dest, values in {**SHARED_DEFAULTS, **defaults}.items():
        if getattr(args, dest) is None:
            setattr(args, dest, values[column])
    if device.type == "cuda":
        args.peak_tflops = args.peak_tflops or H100_BF16_DENSE_TFLOPS
    else:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[int], object], calls: int, warmup: int, device: torch.device) -> float:
    """Mean wall seconds of fn(i) over `calls` back-to-back calls, after `warmup` calls.

    One synchronisation before and after the timed loop: the GPU stays as busy as in training,
    where nothing is read back per step.
    """
    for i in range(warmup):
        fn(i)
    sync(device)
    start = time.perf_counter()
    for i in range(calls):
        fn(warmup + i)
    sync(device)
    return (time.perf_counter() - start) / calls


L2_FLUSH_BYTES = 256 * 2**20  # more than any GPU's L2 (H100: 50 MB, H200: 60 MB), as triton.testing.do_bench flushes


def device_ms(step: Callable[[], object], reps: int = 10) -> float | None:
    """Median device milliseconds of `step` (CUDA) with the host's launch overhead hidden,
    or None where `step` waits for the GPU (a host sync), so that the host cannot run ahead.

    Why: a loss's few kernels can take less GPU time than Python takes to launch them, and
    then launch-to-launch timing measures the host. In training the host runs ahead of the
    GPU and that overhead is hidden. Here too: the GPU is stalled (torch.cuda._sleep) while
    every rep is queued, each after an L2 flush, between two events; if the stall ended
    before the host had queued them all, it is lengthened and the reps are run again.
    The flush reads a buffer larger than L2 (do_bench writes one): written, it would leave L2
    full of dirty lines whose write-back, up to an L2's worth, is charged to the timed step.
    Few reps: a stream holds about 1,000 pending launches, and a host that blocks on a full
    queue would look like a host that syncs (the eager loss launches ~30 kernels a rep).
    """
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    cycles = 2**26  # ~34 ms at an H200's ~1.98 GHz
    for _ in range(3):
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        torch.cuda.synchronize()
        torch.cuda._sleep(cycles)
        stall = torch.cuda.Event()
        stall.record()
        for start, end in events:
            flush.sum()
            start.record()
            step()
            end.record()
        host_ahead = not stall.query()  # the GPU was still stalled when the last rep was queued
        torch.cuda.synchronize()
        if host_ahead:
            return statistics.median(start.elapsed_time(end) for start, end in events)
        cycles *= 4
    return None


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matmuls and convolutions run by fn(), forward and backward."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measured_peak_tflops(device: torch.device, n: int = 1024, reps: int = 10) -> float:
    """The best fp32 matmul rate seen on this device: the CPU's practical peak for the roofline line."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for _ in range(reps + 2):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times[2:]) / 1e12


def peak_tflops(args: argparse.Namespace, device: torch.device) -> tuple[float, str]:
    """(peak TFLOP/s, what it is) for the roofline line."""
    if args.peak_tflops is not None:
        what = "dense bf16 peak (--peak-tflops)" if device.type == "cuda" else "--peak-tflops"
        return args.peak_tflops, what
    return measured_peak_tflops(device), "fp32 matmul measured here"


def roofline(flops_per_second: float, peak: tuple[float, str]) -> str:
    tflops, what = peak
    return (f"roofline: achieved {flops_per_second / 1e12:.3g} TFLOP/s = {100 * flops_per_second / 1e12 / tflops:.1f}% "
            f"of {tflops:.3g} TFLOP/s ({what}); FLOPs counted by torch.utils.flop_counter (2 per multiply-add)")


def random_images(n: int, seed: int = 0, size: int = 28, channels: int = 3) -> np.ndarray:
    """(n, size, size, channels) uint8, MedMNIST's native layout; speed does not depend on the pixels."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def random_teacher(name: str, image_size: int, device: torch.device) -> torch.nn.Module:
    """The frozen DINOv2 backbone with random weights, loaded through medal's own checkpoint path."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_random_teacher(name, Path(tmp) / f"{name}.pth")
        return load_teacher(name, weights, image_size).to(device)


def index_batches(n: int, batch: int, count: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(count, batch) sample indices, each row a random draw without replacement, resident on the device."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:batch] for _ in range(count)]).to(device)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def median_seconds(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    """Median wall seconds of fn() over `reps` synchronised calls (after one untimed call)."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None) -> str:
    """A markdown table; columns right-aligned where `right` says so (default: all but the first)."""
    right = right or [i > 0 for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"CPU {cpu_model()} ({os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f} at the end)")


def versions() -> str:
    import timm

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return f"torch {torch.__version__}; timm {timm.__version__}; triton {triton_version}; python {platform.python_version()}"


def results_header(title: str, device: torch.device, path: Path) -> str:
    """A dated, attributed section header for `path` (with the file's title when it is new)."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fresh = not path.exists() or path.stat().st_size == 0
    return ((RESULTS_TITLE if fresh else "") + f"\n### {title}, {now}\n\n"
            f"device: {device_name(device)}; {versions()}\n\n"
            f"command: `{Path(sys.executable).name} {shlex.join(sys.argv)}`\n\n")


SUPERSEDED = "## Superseded and older runs"


def report(title: str, body: str, args: argparse.Namespace, device: torch.device) -> None:
    """Print the result; with --append, add it to that file under a dated, attributed header, at the end of
    its current sections (before "## Superseded and older runs", where RESULTS.md has one)."""
    print(body)
    if not args.append:
        return
    path: Path = args.append
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = results_header(title, device, path) + body + "\n"
    text = path.read_text() if path.exists() else ""
    head, mark, tail = text.partition(SUPERSEDED)
    path.write_text(head + entry + "\n" + mark + tail if mark else text + entry)
