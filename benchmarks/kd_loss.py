"""Forward+backward time, achieved bandwidth and peak memory of the distillation loss.

Implementations (multi-class loss, alpha = 0.5, t = 2):
  triton   medal.kernels.kd_triton.kd_loss_triton (fused: one read, gradient saved in forward)
  eager    medal.kd_loss.kd_loss_torch (log_softmax + kl_div + cross_entropy)
  compiled torch.compile(kd_loss_torch)
  liger    Liger-Kernel: (1-alpha) t^2 LigerKLDIVLoss(log_softmax(s/t), log_softmax(z_t/t)) + alpha LigerCrossEntropyLoss
           (its KL takes log-probabilities, so the two log_softmaxes stay in torch)

Bytes per call (fwd+bwd), the minimum any implementation must move: read student and
teacher logits and the int64 labels, write the gradient (input dtype). GB/s = bytes / time,
compared against --peak-gbps (H200 HBM3e: 4800).

On CUDA: every implementation, B in {128, 4096, 65536} x C in {8, 14, 1000} x {bf16, fp32},
timed with triton.testing.do_bench (median). Without CUDA: eager and compiled only, B in
{128, 4096}, timed with time.perf_counter (median of 20, one torch thread unless
--threads), so the script runs anywhere.

    python benchmarks/kd_loss.py [--quick] [--peak-gbps 4800] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medal.kd_loss import kd_loss_torch  # noqa: E402

T, ALPHA = 2.0, 0.5


def make_impls(cuda: bool) -> dict[str, Callable | str]:
    """name -> loss function (s, z_t, y) -> scalar, or a string saying why it is absent."""
    impls: dict[str, Callable | str] = {}
    if cuda:
        try:
            from medal.kernels.kd_triton import kd_loss_triton

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


def bench_one(name: str, loss_fn, b: int, c: int, dtype: torch.dtype, device: str, reps: int) -> tuple[float, float | None]:
    """(milliseconds per fwd+bwd, peak extra MiB or None) for one implementation and shape."""
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
        return triton.testing.do_bench(step, return_mode="median"), peak
    return time_cpu(step, reps), None


def device_name(cuda: bool) -> str:
    if cuda:
        return torch.cuda.get_device_name()
    import platform

    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument("--peak-gbps", type=float, default=4800.0, help="device memory bandwidth (H200: 4800)")
    ap.add_argument("--append", type=Path, help="append the table to this markdown file")
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
        batches, widths = ((128, 4096, 65536) if cuda else (128, 4096)), (8, 14, 1000)
    if args.batches:
        batches = tuple(int(x) for x in args.batches.split(","))
    if args.classes:
        widths = tuple(int(x) for x in args.classes.split(","))
    reps = 5 if args.quick else 20
    impls = make_impls(cuda)

    rows = ["| impl | dtype | B | C | fwd+bwd ms | GB/s | % of peak | peak extra MiB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, fn in impls.items():
        if isinstance(fn, str) and fn != "compiled":
            print(f"{name}: {fn}")
            rows.append(f"| {name} | {fn} | | | | | | |")
    for dtype in (torch.bfloat16, torch.float32):
        for b in batches:
            for c in widths:
                nbytes = 3 * b * c * dtype.itemsize + 8 * b
                for name, fn in impls.items():
                    if isinstance(fn, str) and fn != "compiled":
                        continue
                    dname = str(dtype).removeprefix("torch.")
                    try:
                        ms, peak = bench_one(name, fn, b, c, dtype, device, reps)
                    except Exception as exc:  # a backend failing on one shape must not hide the rest
                        rows.append(f"| {name} | {dname} | {b} | {c} | failed: {type(exc).__name__} | | | |")
                        print(f"{name} {dname} B={b} C={c} failed: {exc}", file=sys.stderr)
                        continue
                    gbps = nbytes / (ms * 1e-3) / 1e9
                    pct = f"{100 * gbps / args.peak_gbps:.1f}" if cuda else "n/a"
                    mib = f"{peak:.1f}" if peak is not None else "n/a"
                    rows.append(f"| {name} | {dname} | {b} | {c} | {ms:.4f} | {gbps:.4g} | {pct} | {mib} |")
                    print(rows[-1], file=sys.stderr, flush=True)
    table = "\n".join(rows)
    print(table)
    if args.append:
        import triton

        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        header = (
            f"\n## kd_loss fwd+bwd, {now}\n\n"
            f"device: {device_name(cuda)}; torch {torch.__version__}; triton {triton.__version__}; "
            f"t={T}, alpha={ALPHA}, multi-class; peak {args.peak_gbps:g} GB/s\n\n"
            f"command: `python {' '.join(sys.argv)}`\n\n"
        )
        with args.append.open("a") as fh:
            fh.write(header + table + "\n")
    return table


if __name__ == "__main__":
    main()
