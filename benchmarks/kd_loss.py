"""Forward+backward time, achieved bandwidth and peak memory of the distillation loss.

Implementations (multi-class loss, alpha = 0.5, t = 2):
  triton   medal.losses.kd_triton.kd_loss_triton (fused: one read, gradient saved in forward)
  eager    medal.losses.kd_loss.kd_loss_torch (log_softmax + kl_div + cross_entropy)
  compiled torch.compile(kd_loss_torch)
  liger    Liger-Kernel: (1-alpha) t^2 LigerKLDIVLoss(log_softmax(s/t), log_softmax(z_t/t)) + alpha LigerCrossEntropyLoss
           (its KL takes log-probabilities, so the two log_softmaxes stay in torch)

Bytes per call (fwd+bwd), the minimum any implementation must move: read student and
teacher logits and the int64 labels, write the gradient (input dtype). GB/s = bytes / time,
compared against --peak-gbps (H200 HBM3e: 4800).

Two times on CUDA. "launched": triton.testing.do_bench, each call launched from Python
and timed alone, so host overhead counts where it exceeds the GPU work. "device": the same
calls queued while the GPU is stalled (`common.device_ms`), so the host runs ahead as in a
training step and only GPU time counts; GB/s and the bandwidth target use it. Liger's CE
reads a count back to the host (`.item()`), so it has no device time. A device-to-device
copy of the same bytes gives the bandwidth attainable at all. Then two tables give the
kernel's speed-up over each other implementation per shape, device and launched, against
the issue's targets.

On CUDA: every implementation, B in {128, 4096, 65536} x C in {8, 14, 1000} x {bf16, fp32},
timed with triton.testing.do_bench (median). Without CUDA: eager and compiled only, B in
{128, 4096}, timed with time.perf_counter (median of 20, one torch thread unless
--threads), so the script runs anywhere.

    python benchmarks/kd_loss.py [--quick] [--peak-gbps 4800] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import device_ms, results_header  # noqa: E402

from medal.losses.kd_loss import kd_loss_torch  # noqa: E402

T, ALPHA = 2.0, 0.5


def make_impls(cuda: bool) -> dict[str, Callable | str]:
    """name -> loss function (s, z_t, y) -> scalar, or a string saying why it is absent."""
    impls: dict[str, Callable | str] = {}
    if cuda:
        try:
            from medal.losses.kd_triton import kd_loss_triton

            impls["triton"] = lambda s, z, y: kd_loss_triton(s, z, y, t=T, alpha=ALPHA)
        except ImportError as exc:
            impls["triton"] = f"not importable ({exc})"
    impls["eager"] = lambda s, z, y: kd_loss_torch(s, z, y, t=T, alpha=ALPHA)
    impls["compiled"] = "compiled"  # built per shape in `bench_one`, after a dynamo reset
    if cuda:
        try:
            from liger_kernel.transformers import LigerCrossEntropyLoss, LigerKLDIVLoss

            kl, ce = LigerKLDIVLoss(reduction="batchmean", log_target=True), LigerCrossEntropyLoss()

            def liger(s, z, y):
                # KL first: Liger's CE overwrites its input buffer with the gradient.
                k = kl(F.log_softmax(s.float() / T, dim=1), F.log_softmax(z.float() / T, dim=1))
                return (1 - ALPHA) * T * T * k + ALPHA * ce(s, y)

            impls["liger"] = liger
        except ImportError:
            impls["liger"] = "not installed"
    return impls


def time_cpu(fn: Callable[[], object], reps: int) -> float:
    """Median milliseconds of `fn` over `reps` runs after two warm-ups."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


Timing = dict[str, float | None]  # "launched" and "device" milliseconds per fwd+bwd (device: CUDA only)


def bench_one(name: str, loss_fn, b: int, c: int, dtype: torch.dtype, device: str, reps: int) -> tuple[Timing, float | None]:
    """(times per fwd+bwd, peak extra MiB or None) for one implementation and shape."""
    g = torch.Generator(device=device).manual_seed(0)
    s = (3 * torch.randn(b, c, generator=g, device=device)).to(dtype).requires_grad_(True)
    z = (3 * torch.randn(b, c, generator=g, device=device)).to(dtype)
    y = torch.randint(0, c, (b,), generator=g, device=device)
    if loss_fn == "compiled":
        torch._dynamo.reset()
        loss_fn = torch.compile(lambda s_, z_, y_: kd_loss_torch(s_, z_, y_, t=T, alpha=ALPHA))

    def step() -> None:
        (grad,) = torch.autograd.grad(loss_fn(s, z, y), s)

    step()  # compile / autotune outside the timing
    if device == "cuda":
        import triton.testing

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        launched = triton.testing.do_bench(step, return_mode="median")
        return {"launched": launched, "device": device_ms(step)}, peak
    return {"launched": time_cpu(step, reps), "device": None}, None


def copy_gbps(n_bytes: int) -> float:
    """Device GB/s of a device-to-device copy moving `n_bytes` (half read, half written)."""
    src = torch.empty(n_bytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return n_bytes / (device_ms(lambda: dst.copy_(src)) * 1e-3) / 1e9


TARGETS = {"eager": 3.0, "compiled": 1.5}  # the speed-ups of the kernel, at the largest sizes
TARGET_PEAK_PCT = 70.0


def summary(results: dict[tuple[str, int, int], dict[str, Timing]], peak_gbps: float, timing: str = "device") -> str:
    """Per shape, by `timing` ("device" or "launched"): the kernel's speed-up over each other
    implementation (blank where one has no such time) and its share of peak bandwidth."""
    others = sorted({name for impls in results.values() for name in impls} - {"triton"})
    rows = [f"| dtype | B | C | triton {timing} ms | " + " | ".join(f"x {o}" for o in others) + " | % of peak |",
            "|---|---:|---:|---:|" + "---:|" * (len(others) + 1)]
    for (dname, b, c), impls in results.items():
        times = {name: t[timing] for name, t in impls.items() if t[timing] is not None}
        if "triton" not in times:
            continue
        ms = times["triton"]
        ratios = [f"{times[o] / ms:.2f}" if o in times else "" for o in others]
        pct = 100 * bytes_moved(b, c, dname) / (ms * 1e-3) / 1e9 / peak_gbps
        rows.append(f"| {dname} | {b} | {c} | {ms:.4f} | " + " | ".join(ratios) + f" | {pct:.1f} |")
    targets = ", ".join(f">= {x}x {name}" for name, x in TARGETS.items())
    return "\n".join(rows) + f"\n\ntargets at the largest sizes: {targets}, >= {TARGET_PEAK_PCT:g}% of peak bandwidth"


def bytes_moved(b: int, c: int, dname: str) -> int:
    """The minimum any implementation moves: read student and teacher logits and int64
    labels, write the gradient in the input dtype."""
    return 3 * b * c * getattr(torch, dname).itemsize + 8 * b


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument("--peak-gbps", type=float, default=4800.0, help="device memory bandwidth (H200: 4800)")
    ap.add_argument("--append", type=Path, help="append the tables to this markdown file, row by row")
    ap.add_argument(
        "--threads", type=int, default=1,
        help="CPU only: torch threads (default 1; on small machines idle pool threads spin and skew timings)",
    )
    ap.add_argument("--batches", help="comma-separated batch sizes instead of the default grid")
    ap.add_argument("--classes", help="comma-separated class counts instead of the default grid")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(args.threads)
    if args.quick:
        batches, widths = (128,), (14, 1000)
    else:
        batches, widths = ((65536, 4096, 128) if cuda else (4096, 128)), (1000, 14, 8)
    if args.batches:
        batches = tuple(int(x) for x in args.batches.split(","))
    if args.classes:
        widths = tuple(int(x) for x in args.classes.split(","))
    reps = 5 if args.quick else 20
    impls = make_impls(cuda)

    out = None
    if args.append:
        args.append.parent.mkdir(parents=True, exist_ok=True)
        settings = f"t={T}, alpha={ALPHA}, multi-class" + (f"; peak {args.peak_gbps:g} GB/s" if cuda else "")
        header = results_header("kd_loss fwd+bwd", torch.device(device), args.append) + settings + "\n\n"
        out = args.append.open("a")
        out.write(header)

    def emit(line: str) -> None:
        """Print a line and append it at once, so that a run cut off by a time limit keeps its rows."""
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    if cuda:
        n_bytes = bytes_moved(max(batches), max(widths), "bfloat16")
        gbps = copy_gbps(n_bytes)
        emit(f"attainable: a device-to-device copy of {n_bytes / 1e6:.0f} MB runs at {gbps:.4g} GB/s "
             f"({100 * gbps / args.peak_gbps:.1f}% of peak), device time\n")
    emit("| impl | dtype | B | C | launched ms | device ms | GB/s | % of peak | peak extra MiB |")
    emit("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, fn in impls.items():
        if isinstance(fn, str) and fn != "compiled":
            emit(f"| {name} | {fn} | | | | | | | |")
    results: dict[tuple[str, int, int], dict[str, Timing]] = {}
    # Largest sizes first: the targets are stated there, and a time limit cuts the small ones.
    for b in batches:
        for c in widths:
            for dtype in (torch.bfloat16, torch.float32):
                dname = str(dtype).removeprefix("torch.")
                for name, fn in impls.items():
                    if isinstance(fn, str) and fn != "compiled":
                        continue
                    try:
                        times, peak = bench_one(name, fn, b, c, dtype, device, reps)
                    except Exception as exc:  # a backend failing on one shape must not hide the rest
                        emit(f"| {name} | {dname} | {b} | {c} | failed: {type(exc).__name__} | | | | |")
                        print(f"{name} {dname} B={b} C={c} failed: {exc}", file=sys.stderr)
                        continue
                    results.setdefault((dname, b, c), {})[name] = times
                    # Bandwidth by device time where there is one (CUDA), else by the CPU's wall time.
                    ms = times["device"] or times["launched"]
                    gbps = bytes_moved(b, c, dname) / (ms * 1e-3) / 1e9
                    pct = f"{100 * gbps / args.peak_gbps:.1f}" if cuda and times["device"] else "n/a"
                    dev = f"{times['device']:.4f}" if times["device"] else ("n/a (syncs)" if cuda else "n/a")
                    mib = f"{peak:.1f}" if peak is not None else "n/a"
                    emit(f"| {name} | {dname} | {b} | {c} | {times['launched']:.4f} | {dev} | {gbps:.4g} | {pct} | {mib} |")
    if cuda:
        for timing in ("device", "launched"):
            emit(f"\nkernel speed-up, {timing} time:\n")
            emit(summary(results, args.peak_gbps, timing))
    if out:
        out.close()
    return "\n".join(f"{k}: {v}" for k, v in results.items())


if __name__ == "__main__":
    main()
