"""Peak memory of `medal distill` against data set size: streamed under a fixed --max-memory, and resident.

For each size, a generated `bloodmnist_64.npz` of that many MB of 64 px images (train : val : test
= 1 : 2 : 3) is trained on for one epoch (tiny student, 16 px input) in a child process, once with
--max-memory BUDGET (every split streams) and once with a budget it all fits (resident). The child's
peak RSS comes from getrusage in a fresh parent, so no earlier child counts. Streamed, the peak
should stay flat as the data grows; resident, it grows with the data (measured: about once the data,
though the budget counts a resident CPU split twice, for the array and its channels-first copy).

    python benchmarks/stream_memory.py [--sizes 25,50,100] [--budget 20M] [--quick] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from common import report, table  # also puts medal on the path

from medal.runtime.device import resolve_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
ROW_BYTES = SIZE * SIZE * 3
PARENT = textwrap.dedent("""
    import resource, subprocess, sys
    proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
    print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
""")


def make_data(root: Path, megabytes: float) -> int:
    """A random bloodmnist_64.npz of about `megabytes` of images; returns its image count."""
    total = int(megabytes * 2**20 / ROW_BYTES)
    n = {"train": total // 6, "val": total // 3, "test": total - total // 6 - total // 3}
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in n.items():
        arrays[f"{split}_images"] = rng.integers(0, 60, size=(count, SIZE, SIZE, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 8)[:, None].astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"bloodmnist_{SIZE}.npz", **arrays)
    return total


def peak_rss(root: Path, work: Path, max_memory: str) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of one distill epoch on ROOT's data."""
    cmd = [sys.executable, "-m", "medal", "distill", "--dataset", "bloodmnist", "--size", str(SIZE), "--root", str(root),
           "--alpha", "1", "--student", "test_resnet", "--image-size", "16", "--epochs", "1", "--batch-size", "64",
           "--device", "cpu", "--cache-dir", str(work / "cache"), "--out", str(work / "run"), "--force",
           "--max-memory", max_memory]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PARENT, *cmd], capture_output=True, text=True, env=env)
    code, kilobytes = map(int, proc.stdout.split())
    if code:
        raise SystemExit(f"distill failed:\n{proc.stderr}")
    return kilobytes / 1024, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="25,50,100", help="data set sizes in MB of images (comma-separated)")
    ap.add_argument("--budget", default="20M", help="--max-memory of the streamed runs")
    ap.add_argument("--quick", action="store_true", help="sizes 4,8,16 MB with a 2M budget (a smoke run)")
    ap.add_argument("--append", type=Path, help="append the table, with a header, to this markdown file")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.budget = "4,8,16", "2M"
    rows = []
    for megabytes in (float(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="medal-stream-memory-") as tmp:
            root = Path(tmp) / "data"
            images = make_data(root, megabytes)
            streamed, s_seconds = peak_rss(root, Path(tmp) / "streamed", args.budget)
            resident, r_seconds = peak_rss(root, Path(tmp) / "resident", "64G")
        rows.append([f"{megabytes:g}", f"{images:,}", f"{streamed:,.0f}", f"{resident:,.0f}",
                     f"{s_seconds:.0f}", f"{r_seconds:.0f}"])
    body = "\n".join([
        f"`medal distill`, 1 epoch, test_resnet at 16 px, batch 64, CPU; generated {SIZE} px RGB data, train : val : "
        f"test = 1 : 2 : 3. Streamed: --max-memory {args.budget} (every split streams; the first run converts the "
        f"file, included). Resident: --max-memory 64G. Peak RSS of the whole process (torch included).",
        "",
        table(["images MB", "images", f"streamed peak RSS MiB ({args.budget})", "resident peak RSS MiB",
               "streamed s", "resident s"], rows),
    ])
    report("Peak memory against data set size: streamed vs resident", body, args, resolve_device("cpu"))


if __name__ == "__main__":
    main()
