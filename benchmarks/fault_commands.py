"""The long commands the fault matrix interrupts, on tiny generated inputs, and how to read each one's state.

Inputs (made once per matrix, those the chosen commands need): a learnable BloodMNIST-shaped file (96/32/32 images of 28x28x3, 8
classes), a randomly initialised DINOv2 ViT-S/14, a teacher cache built from them (for the KD
commands), and an image folder of 600 PNGs (for import-dataset). Every command writes only under
its `live` folder; the inputs are read-only.

For each command the matrix needs to know, from files and log lines alone:
- `complete(live)`: its work was done (a rerun would only say so), e.g. the run directory exists;
- `saved(live)`: after a kill, whether partial progress was kept for a rerun to resume (None: the
  command keeps none by design);
- `resumed(log)`: whether a rerun's log says it went on from that progress instead of starting over:
  distill's "resuming RUN from epoch ..." / "... after its last epoch", cache-teacher's
  "resuming cache KEY: N of M feature chunks already computed", sweep's "N of M runs already
  finished, skipped" or a point's own distill resume line (read from its log while it runs).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TEACHER = "dinov2_vits14"
STUDENT = ["--student", "resnet10n_28", "--batch-size", "16", "--image-size", "28", "--milestones", "2", "--device", "cpu"]
N = {"train": 96, "val": 32, "test": 32}
IMPORT_CLASSES, IMPORT_PER_CLASS = 4, 150

DISTILL_RESUMED = re.compile(r"^resuming \S+ (from epoch \d+ of \d+|after its last epoch)", re.MULTILINE)
CACHE_RESUMED = re.compile(r"^resuming cache \S+: \d+ of \d+ feature chunks already computed", re.MULTILINE)
SWEEP_SKIPPED = re.compile(r"^sweep: \d+ of \d+ runs already finished, skipped", re.MULTILINE)


@dataclass(frozen=True)
class Inputs:
    root: Path  # MedMNIST directory holding bloodmnist.npz
    weights: Path  # the random DINOv2 checkpoint
    cache_dir: Path  # the teacher cache the KD commands read
    images: Path  # the ImageFolder import-dataset reads


@dataclass(frozen=True)
class FaultCommand:
    name: str  # what --commands takes
    label: str  # the table's first cell
    signals: tuple[int, ...]  # cycled over the trials
    argv: Callable[[Inputs, Path], list[str]]  # after `python`; called at every start (torchrun takes a fresh port)
    complete: Callable[[Path], bool]
    saved: Callable[[Path], bool] | None
    resumed: Callable[[str], bool] | None
    needs: tuple[str, ...] = ()  # inputs beyond the MedMNIST file: "weights", "cache", "images"
    child_logs: str | None = None  # glob under `live` of logs the command's children write and delete (sweep)
    unavailable: Callable[[], str | None] = field(default=lambda: None)  # why it cannot run here


def medmnist_file(root: Path, seed: int = 0) -> Path:
    """A learnable toy file in MedMNIST's layout (as tests/conftest.py's): each class brightens its own band."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in N.items():
        labels = (np.arange(count) % 8)[:, None]
        images = rng.integers(0, 60, size=(count, 28, 28, 3)).astype(np.uint8)
        for i, c in enumerate(labels[:, 0]):
            images[i, 3 * c : 3 * c + 3] = 230
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "bloodmnist.npz", **arrays)
    return root / "bloodmnist.npz"


def image_folder(root: Path, seed: int = 0) -> Path:
    """ImageFolder layout SOURCE/<class>/*.png, 64x64 RGB noise with the class's band bright."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(IMPORT_CLASSES):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(IMPORT_PER_CLASS):
            pixels = rng.integers(0, 60, size=(64, 64, 3)).astype(np.uint8)
            pixels[16 * c : 16 * c + 6] = 230
            Image.fromarray(pixels, "RGB").save(folder / f"img{i:03d}.png")
    return root


def make_inputs(work: Path, env: dict[str, str], needs: set[str]) -> Inputs:
    """Generate the inputs `needs` names under `work` (the MedMNIST file always), the teacher cache by medal itself."""
    inputs = Inputs(work / "medmnist", work / "vits14_random.pth", work / "cache", work / "images")
    medmnist_file(inputs.root)
    if "images" in needs:
        image_folder(inputs.images)
    if not needs & {"weights", "cache"}:
        return inputs
    code = ("import sys; from pathlib import Path; from medal.models.teachers import save_random_teacher; "
            f"save_random_teacher({TEACHER!r}, Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(inputs.weights)], env=env, check=True)
    if "cache" in needs:
        subprocess.run([sys.executable, "-m", "medal", "cache-teacher", "--dataset", "bloodmnist", "--root", str(inputs.root),
                        "--teacher", TEACHER, "--weights", str(inputs.weights), "--image-size", "28", "--head-epochs", "10",
                        "--batch-size", "16", "--device", "cpu", "--cache-dir", str(inputs.cache_dir)],
                       env=env, check=True, capture_output=True)
    return inputs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_missing() -> str | None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed with gloo is not available here"
    return None


def distill_args(inputs: Inputs, live: Path, *method: str) -> list[str]:
    return ["distill", "--dataset", "bloodmnist", "--root", str(inputs.root), "--cache-dir", str(inputs.cache_dir),
            *method, *STUDENT, "--epochs", "4", "--out", str(live / "run")]


def run_complete(live: Path) -> bool:
    return (live / "run" / "metrics.json").is_file()  # the run directory appears whole (renamed into place)


def run_saved(live: Path) -> bool:
    return any((live / ".run.partial").glob("checkpoint*"))


def distill_resumed(log: str) -> bool:
    return bool(DISTILL_RESUMED.search(log))


def cache_complete(live: Path) -> bool:
    return any(p.is_dir() for p in (live / "cache").glob("[!.]*.zarr"))


def cache_saved(live: Path) -> bool:
    """A feature chunk written whole (Zarr writes a chunk under a temporary *.partial name first)."""
    return any(p.is_file() and not p.name.endswith(".partial")
               for p in (live / "cache").glob(".*.zarr.partial/*/features/c/**/*"))


def sweep_saved(live: Path) -> bool:
    runs = live / "runs"
    return any(runs.glob("[!.]*/metrics.json")) or any(runs.glob(".*.partial/checkpoint*"))


def sweep_resumed(log: str) -> bool:
    return bool(SWEEP_SKIPPED.search(log) or DISTILL_RESUMED.search(log))


KD = ["--alpha", "0.5", "--t", "2", "--teacher", TEACHER]
BOTH = (signal.SIGKILL, signal.SIGTERM)

COMMANDS = [
    FaultCommand(
        "cache-teacher", "`cache-teacher` (ViT-S/14, 84 px, 20 chunks)", (signal.SIGKILL,),
        lambda i, live: ["-m", "medal", "cache-teacher", "--dataset", "bloodmnist", "--root", str(i.root), "--teacher",
                         TEACHER, "--weights", str(i.weights), "--image-size", "84", "--head-epochs", "20",
                         "--batch-size", "8", "--chunk-rows", "8", "--device", "cpu", "--cache-dir", str(live / "cache")],
        cache_complete, cache_saved, lambda log: bool(CACHE_RESUMED.search(log)), needs=("weights",)),
    FaultCommand("distill-ce", "`distill --alpha 1`", BOTH, lambda i, live: ["-m", "medal", *distill_args(i, live, "--alpha", "1")],
                 run_complete, run_saved, distill_resumed),
    FaultCommand("distill-kd", "`distill` from a cache (t 2, alpha 0.5)", BOTH,
                 lambda i, live: ["-m", "medal", *distill_args(i, live, *KD)], run_complete, run_saved, distill_resumed,
                 needs=("cache",)),
    FaultCommand(
        "sweep", "`sweep --jobs 2` (3 points)", BOTH,
        lambda i, live: ["-m", "medal", "sweep", "--dataset", "bloodmnist", "--root", str(i.root), "--cache-dir",
                         str(i.cache_dir), "--teacher", TEACHER, "--t", "1,2,3", "--alpha", "0.5", "--seeds", "0",
                         "--jobs", "2", *STUDENT, "--epochs", "3", "--runs-dir", str(live / "runs")],
        lambda live: (live / "runs" / "sweep.json").is_file(), sweep_saved, sweep_resumed,
        needs=("cache",), child_logs="runs/.*.log"),
    FaultCommand(
        "import-dataset", f"`import-dataset` ({IMPORT_CLASSES * IMPORT_PER_CLASS} PNGs)", (signal.SIGKILL,),
        lambda i, live: ["-m", "medal", "import-dataset", str(i.images), "--name", "faults", "--size", "28",
                         "--data-dir", str(live / "datasets")],
        lambda live: (live / "datasets" / "faults.zarr").is_dir(), None, None, needs=("images",)),
    FaultCommand(
        "distill-ddp", "`distill --alpha 1` under `torchrun --nproc-per-node 2` (gloo)", BOTH,
        lambda i, live: ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                         "--master-port", str(free_port()), "-m", "medal", *distill_args(i, live, "--alpha", "1")],
        run_complete, run_saved, distill_resumed, unavailable=gloo_missing),
]
BY_NAME = {c.name: c for c in COMMANDS}
