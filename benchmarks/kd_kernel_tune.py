"""Device time of the fused KD kernel at other tilings than its default, the default marked.

`kd_triton.launch_config` picks rows per program and warps from the width alone, from a
handful of H200 timings of an earlier kernel. This script times the forward kernel (all of
the loss's work: backward only scales the kept gradient, and not even that for a plain
`loss.backward()`) at each candidate tiling, so that one GPU session measures both the
default and what to change it to. Multi-class, t=2, alpha=0.5; bytes as in kd_loss.py.

Candidates per width C: BLOCK_C = next power of two of C, rows per program for tiles of
512 to 8192 elements (one row where C alone is wider), 4, 8, 16 or 32 elements a thread (1
to 32 warps), each with each row's logs and divisions as fast approximate instructions
or exact (FAST_MATH); and the default tiling also with the row sums and maxima taken apart
instead of fused into one reduction (FUSED_REDUCE; fused won or tied at every tiling on the
H200), and capped at 128, 96 or 80 registers a thread (maxnreg: at C=1000 the default takes
95, so 10 programs of 2 warps fit an SM; at 80, 12 fit, for ~3 % more instructions and no
spills in the sm_90 compile). Where fast math is off (the interpreter, ROCm), exact only.
Rows are printed as they are measured, so a run cut off by a time limit keeps them in its
log; the table goes to --append at the end.

    python benchmarks/kd_kernel_tune.py [--quick] [--batch 65536] [--classes 1000,14] [--append benchmarks/RESULTS.md]

Needs CUDA. With TRITON_INTERPRET=1 it runs on the CPU through Triton's interpreter, as a
smoke test of the plumbing only: those times mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import device_ms, report, table  # noqa: E402
from kd_loss import ALPHA, T, bytes_moved, time_cpu  # noqa: E402

from medal.losses import kd_triton  # noqa: E402

MIN_TILE, MAX_TILE = 512, 8192
ELEMS_PER_THREAD = (4, 8, 16, 32)
REGISTER_CAPS = (128, 96, 80)


def candidates(n_cols: int) -> list[dict[str, int]]:
    """Launch configs for multi-class rows of width n_cols (one column tile, the default's)."""
    default = kd_triton.launch_config(n_cols, multi_label=False)
    block_c = default["BLOCK_C"]
    maths = (True, False) if kd_triton.FAST_MATH else (False,)
    configs = []
    rows = max(1, MIN_TILE // block_c)
    while rows * block_c <= max(MAX_TILE, block_c):
        for per_thread in ELEMS_PER_THREAD:
            warps = rows * block_c // (32 * per_thread)
            if 1 <= warps <= 32:
                configs += [default | {"BLOCK_B": rows, "num_warps": warps, "FAST_MATH": fast} for fast in maths]
        rows *= 2
    if default not in configs:  # the default's own warps may fall outside the 4-32 per-thread grid
        configs.append(default)
    return (configs + [default | {"FUSED_REDUCE": not default["FUSED_REDUCE"]}]
            + [default | {"maxnreg": cap} for cap in REGISTER_CAPS])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument("--batch", type=int, help="rows (default 65536 on CUDA, 64 under the interpreter)")
    ap.add_argument("--classes", default="1000,14", help="comma-separated widths (default 1000,14)")
    ap.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated logit dtypes")
    ap.add_argument("--peak-gbps", type=float, default=4800.0, help="device memory bandwidth (H200: 4800)")
    ap.add_argument("--append", type=Path, help="append the table, with a header, to this markdown file")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("kd_kernel_tune.py needs CUDA (or TRITON_INTERPRET=1 for a smoke run on the CPU).")
    device = "cuda" if cuda else "cpu"
    batch = args.batch or (65536 if cuda else 64)
    widths = [int(c) for c in args.classes.split(",")]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    if args.quick:
        widths, dtypes = widths[:1], dtypes[:1]

    rows, notes = [], []
    for dtype in dtypes:
        dname = str(dtype).removeprefix("torch.")
        for c in widths:
            g = torch.Generator(device=device).manual_seed(0)
            s = (3 * torch.randn(batch, c, generator=g, device=device)).to(dtype)
            z = (3 * torch.randn(batch, c, generator=g, device=device)).to(dtype)
            y = torch.randint(0, c, (batch,), generator=g, device=device)
            default = kd_triton.launch_config(c, multi_label=False)
            timed = []
            configs = candidates(c)[:2] if args.quick else candidates(c)
            for config in configs:
                def step(config=config) -> None:
                    kd_triton.kd_forward(s, z, y, T, ALPHA, multi_label=False, config=config)

                step()  # compile outside the timing
                ms = device_ms(step) if cuda else time_cpu(step, reps=2)
                if ms is None:  # the host could not get ahead of the GPU: no device time to report
                    print(f"{dname} C={c} {config}: no device time (the host waited for the GPU)", flush=True)
                    continue
                timed.append((ms, config))
                gbps = bytes_moved(batch, c, dname) / (ms * 1e-3) / 1e9
                per_thread = config["BLOCK_B"] * config["BLOCK_C"] // (32 * config["num_warps"])
                rows.append([dname, c, config["BLOCK_B"], config["BLOCK_C"], config["num_warps"], per_thread,
                             "yes" if config["FAST_MATH"] else "no", "yes" if config["FUSED_REDUCE"] else "no",
                             config.get("maxnreg", ""),
                             f"{ms:.4f}", f"{gbps:.4g}", f"{100 * gbps / args.peak_gbps:.1f}" if cuda else "n/a",
                             "default" if config == default else ""])
                print(" | ".join(map(str, rows[-1])), flush=True)
            if not timed:
                continue
            best_ms, best = min(timed, key=lambda pair: pair[0])
            default_ms = next((ms for ms, config in timed if config == default), None)
            versus = f", default {default_ms:.4f} ms (x{default_ms / best_ms:.2f})" if default_ms else ""
            arithmetic = "fast" if best["FAST_MATH"] else "exact"
            fused = "fused" if best["FUSED_REDUCE"] else "separate"
            cap = f", at most {best['maxnreg']} registers" if "maxnreg" in best else ""
            notes.append(f"- {dname}, C={c}: fastest BLOCK_B={best['BLOCK_B']}, {best['num_warps']} warps, "
                         f"{arithmetic} math, {fused} reductions{cap} at {best_ms:.4f} ms{versus}")
    timing = "device ms (host overhead hidden)" if cuda else "interpreter ms (smoke test, not a speed)"
    body = (f"forward kernel, multi-class, B={batch}, t={T}, alpha={ALPHA}, triton {triton.__version__}; "
            f"peak {args.peak_gbps:g} GB/s\n\n"
            + table(["dtype", "C", "BLOCK_B", "BLOCK_C", "warps", "elems/thread", "fast math", "fused reduce",
                     "max registers", timing, "GB/s", "% of peak", ""], rows,
                    right=[False] + [True] * 5 + [False] * 2 + [True] * 4 + [False])
            + "\n\n" + "\n".join(notes))
    report("kd kernel tilings", body, args, torch.device(device))


if __name__ == "__main__":
    main()
