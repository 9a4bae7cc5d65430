"""How fast the CLI answers (#24): wall-clock seconds of fresh processes, beside `python -c "import torch"`.

Measured, each in a new interpreter: `import torch`, `medal --help`, `medal distill --help`,
`medal cache ls` on an empty temporary cache dir, and `medal cache info` on a tiny cache made once
(no teacher run). Rounds run every command once, in turn, so that a machine's changing load weighs
on all of them alike; one untimed round first warms the file cache. `medal ...` is run as the
console script does (`from medal.cli import main; main()`) with the code of a chosen checkout
first on PYTHONPATH, so that two checkouts can be compared with one interpreter:

    python benchmarks/startup.py [--repeats 5] [--roots . /path/to/other/checkout]

The issue's targets: `medal --help` at most 0.3x `import torch`, `medal cache ls` at most 1x.
Standard library only, so that other benchmarks can import `startup_times` cheaply.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDAL = "import sys; from medal.cli import main; sys.argv[0] = 'medal'; main()"
TINY_CACHE = """
import sys
import numpy as np
from medal.cache.store import CacheWriter

with CacheWriter(sys.argv[1], "tinymnist_28_dinov2_vits14_28_0123456789ab") as writer:
    writer.put("test/logits", np.zeros((1, 2), np.float32))
    writer.commit({"dataset": "tinymnist", "teacher": "dinov2_vits14", "image_size": 28, "size": 28,
                   "n_samples": {"train": 4, "val": 2, "test": 1}, "created": "2025-01-02T03:04:05+00:00",
                   "head_metrics": {"val": {"auc": 0.5, "acc": 0.5}, "test": {"auc": 0.75, "acc": 0.5}}})
"""


def checkout_env(root: Path) -> dict[str, str]:
    """This environment with `root`'s medal first on the import path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}


def _run(argv: list[str], root: Path) -> None:
    """In `root`: `python -c` puts the working directory first on sys.path, before PYTHONPATH."""
    subprocess.run(argv, env=checkout_env(root), cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _seconds(argv: list[str], root: Path) -> float:
    start = time.perf_counter()
    _run(argv, root)
    return time.perf_counter() - start


def startup_times(python: str, repeats: int = 5, *, root: Path = REPO) -> dict[str, float]:
    """Median wall-clock seconds of each command over `repeats` rounds, with `python` and `root`'s medal."""
    with tempfile.TemporaryDirectory() as tmp:
        empty, tiny = Path(tmp) / "empty", Path(tmp) / "tiny"
        empty.mkdir()
        _run([python, "-c", TINY_CACHE, str(tiny)], root)
        medal = [python, "-c", MEDAL]
        commands = {
            "import torch": [python, "-c", "import torch"],
            "medal --help": [*medal, "--help"],
            "medal distill --help": [*medal, "distill", "--help"],
            "medal cache ls": [*medal, "cache", "ls", "--cache-dir", str(empty)],
            "medal cache info": [*medal, "cache", "info", "tinymnist", "--cache-dir", str(tiny)],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(repeats + 1):
            for name, argv in commands.items():
                seconds = _seconds(argv, root)
                if round_:  # round 0 warms the file cache
                    times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def table(times: dict[str, float], title: str) -> str:
    """A markdown table of the times, each also as a multiple of `import torch`'s."""
    torch = times["import torch"]
    rows = [f"| {name} | {seconds:.2f} | {seconds / torch:.2f}x |" for name, seconds in times.items()]
    return "\n".join([f"**{title}**", "", "| command | seconds (median) | vs import torch |", "|---|---|---|", *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5); the median is shown")
    ap.add_argument("--python", default=sys.executable, help="the interpreter to run (default: this one)")
    ap.add_argument("--roots", type=Path, nargs="+", default=[REPO],
                    help="checkouts whose medal to time, each in turn (default: this one)")
    args = ap.parse_args()
    for root in args.roots:
        times = startup_times(args.python, args.repeats, root=root.resolve())
        print(table(times, f"{root.resolve()} ({args.repeats} rounds)") + "\n")


if __name__ == "__main__":
    main()
