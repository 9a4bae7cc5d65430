"""What a process start costs a sweep: one short point alone, against `medal sweep --jobs 2` over 8 of them.

On tiny generated data (a BloodMNIST-shaped file, 48/24/24 images) a point of resnet18_28 for
2 epochs is mostly Python, torch and timm starting up. Timed, as a user would run them:

  - `medal distill` of one point, alone (its wall time x 8 is what 8 points cost one process each,
    one after another);
  - `medal sweep --jobs 2` over 8 points (8 seeds of the CE baseline, alpha 1: no teacher cache needed).

With a process per point the sweep pays 8 starts; with workers that stay (#24), 2. Every command
runs in the work folder, so the `medal` imported is the one on PYTHONPATH (or installed), not the
checkout's: `PYTHONPATH=/path/to/other/checkout python benchmarks/sweep_overhead.py` measures that code.

    python benchmarks/sweep_overhead.py [--python PYTHON] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

POINT = ["--alpha", "1", "--student", "resnet18_28", "--image-size", "28", "--epochs", "2", "--milestones", "100",
         "--batch-size", "16", "--device", "cpu"]
SEEDS = 8
SPLITS = {"train": 48, "val": 24, "test": 24}


def make_data(root: Path, classes: int = 8) -> Path:
    """A learnable BloodMNIST-shaped .npz (each class brightens its own band), written without medal."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in SPLITS.items():
        labels = (np.arange(count) % classes)[:, None].astype(np.uint8)
        images = rng.integers(0, 60, size=(count, 28, 28, 3)).astype(np.uint8)
        for i, c in enumerate(labels[:, 0]):
            images[i, int(c) * 3 : int(c) * 3 + 3] = 230
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "bloodmnist.npz", **arrays)
    return root


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one command; its stderr is shown if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:4])} ... failed:\n{proc.stderr[-3000:]}")
    return seconds


def sweep_overhead(python: str, workdir: Path) -> dict:
    """Seconds of one point alone and of `sweep --jobs 2` over 8 points, both run with `python` in `workdir`."""
    workdir = Path(workdir)
    if (workdir / "alone").exists() or (workdir / "runs").exists():  # finished points would be skipped, not timed
        raise SystemExit(f"error: {workdir} holds runs of an earlier measurement; give an empty folder.")
    root = make_data(workdir / "data")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    medal = subprocess.run([python, "-c", "import medal; print(medal.__file__)"], cwd=workdir, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    point = timed([python, "-m", "medal", "distill", "--dataset", "bloodmnist", "--root", str(root), *POINT,
                   "--out", str(workdir / "alone")], workdir, env)
    sweep = timed([python, "-m", "medal", "sweep", "--dataset", "bloodmnist", "--root", str(root), *POINT,
                   "--seeds", f"0:{SEEDS - 1}", "--jobs", "2", "--runs-dir", str(workdir / "runs")], workdir, env)
    return {"medal": medal, "points": SEEDS, "jobs": 2, "point_s": point, "points_alone_s": SEEDS * point,
            "sweep_s": sweep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs medal (default: this one)")
    ap.add_argument("--workdir", type=Path, help="where the data and runs go (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = sweep_overhead(args.python, args.workdir or Path(tmp))
    print(f"medal: {result['medal']}")
    print(f"one point alone (distill, resnet18_28, 2 epochs): {result['point_s']:.1f} s")
    print(f"{result['points']} points alone, one after another (8 x one): {result['points_alone_s']:.1f} s")
    print(f"sweep --jobs {result['jobs']} over {result['points']} points: {result['sweep_s']:.1f} s")


if __name__ == "__main__":
    main()
