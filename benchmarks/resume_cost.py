"""What a resume costs beyond the epochs it still has to train: an 8-epoch run stopped after 4 and resumed,
against the whole run.

On tiny generated data (sweep_overhead.make_data: 48/24/24 images, resnet18_28, batch 16) an epoch is a
fraction of a second, so what a resume costs is mostly the process start: Python, torch and timm, reading
the checkpoint. Timed, as a user would run them, with the medal of `--root` (a checkout) first on the path:

  - `medal distill --epochs 8`, uninterrupted;
  - the same command again in another folder, stopped with SIGTERM once 4 epochs are in its history
    (medal saves and exits), then run again: that rerun is the resume that is timed.

    python benchmarks/resume_cost.py [--root CHECKOUT] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from startup import checkout_env
from sweep_overhead import make_data, timed

REPO = Path(__file__).resolve().parents[1]
EPOCHS, STOP_AFTER = 8, 4
RUN = ["--alpha", "1", "--student", "resnet18_28", "--image-size", "28", "--epochs", str(EPOCHS), "--milestones", "100",
       "--batch-size", "16", "--device", "cpu", "--seed", "0"]


def _stop_after(command: list[str], partial: Path, env: dict[str, str], cwd: Path, epochs: int) -> None:
    """Start `command`, SIGTERM it once its partial history holds `epochs` epochs, wait for it to save and exit."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        history = partial / "history.csv"
        if history.exists() and len(history.read_text().strip().splitlines()) > epochs:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        raise SystemExit(f"error: the run ended before it could be stopped:\n{proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=600)


def resume_cost(python: str, workdir: Path, root: Path = REPO) -> dict:
    """Seconds of the whole run and of its resume after 4 epochs, with `python` and `root`'s medal."""
    workdir = Path(workdir)
    data = make_data(workdir / "data")
    env = {**checkout_env(root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    distill = [python, "-m", "medal", "distill", "--dataset", "bloodmnist", "--root", str(data), *RUN]
    whole = timed([*distill, "--out", str(workdir / "whole")], workdir, env)
    _stop_after([*distill, "--out", str(workdir / "resumed")], workdir / ".resumed.partial", env, workdir, STOP_AFTER)
    start = time.perf_counter()
    proc = subprocess.run([*distill, "--out", str(workdir / "resumed")], cwd=workdir, env=env, capture_output=True,
                          text=True, check=False)
    resumed = time.perf_counter() - start
    found = re.search(r"resuming .* from epoch (\d+) of", proc.stderr)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"error: the rerun did not resume:\n{proc.stderr[-2000:]}")
    return {"epochs": EPOCHS, "resumed_from_epoch": int(found.group(1)), "whole_s": whole, "resumed_s": resumed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs medal (default: this one)")
    ap.add_argument("--root", type=Path, default=REPO, help="the checkout whose medal runs (default: this one)")
    ap.add_argument("--workdir", type=Path, help="where the data and runs go (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = resume_cost(args.python, args.workdir or Path(tmp), args.root.resolve())
    print(f"whole run ({r['epochs']} epochs): {r['whole_s']:.1f} s; resumed at epoch {r['resumed_from_epoch']}: "
          f"{r['resumed_s']:.1f} s")


if __name__ == "__main__":
    main()
