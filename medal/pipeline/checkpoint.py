"""A distill run's resumable checkpoint, and the check that a rerun is the same run.

After every epoch rank 0 writes `checkpoint.pt` atomically into the run's `.NAME.partial`
folder: the model, optimizer and scheduler, the epoch, every random-number state, the
best-so-far and patience counters, and the history. It is the commit point of an epoch:
history.csv and best.pt are written after it, so whatever stops a run, the checkpoint never
lags behind them, and a resume rewrites both from it. Running the same command again then
continues after the last finished epoch, and on CPU ends bit-identical to a run never stopped.

A checkpoint only continues the run that wrote it: its settings (`RUN_SETTINGS`) must equal
the new command's, or the rerun stops and names what differs; `--force` starts over.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from medal.runtime.errors import MedalError
from medal.runtime.io import write_torch

CHECKPOINT = "checkpoint.pt"
LOCK = "lock"  # medal.runtime.filelock on the partial folder: one process trains a run at a time

# config.json keys that decide what a run computes. Data and teachers by content (fingerprint,
# cache keys), not by path: a moved dataset or cache dir is still the same run. "device_type"
# is cpu or cuda: continuing a CPU run on a GPU would mix two kinds of arithmetic, whereas
# cuda:0 and cuda:1 are the same kind. Left out, since they do not change what is computed:
# paths (root, data_root, cache_dir, out, runs_dir), the device's name, --force, --compile (the
# same recipe, compiled or not: a run whose compile failed can go on without it), the teacher
# names (the cache keys say more), and medal/torch versions (recorded in config.json).
RUN_SETTINGS = ("dataset", "size", "data_fingerprint", "cache_keys", "t", "alpha", "student", "pretrained", "epochs",
                "batch_size", "lr", "milestones", "patience", "seed", "image_size", "as_rgb", "in_chans", "keep", "interpolation",
                "deterministic", "world_size", "device_type", "teacher_weighting")


def run_settings(config: dict) -> dict:
    """The settings a checkpoint is tied to, as JSON values (tuples become lists, as read back)."""
    settings = {key: config.get(key) for key in RUN_SETTINGS}
    if settings["alpha"] == 1:
        settings["t"] = None  # the plain CE baseline has no temperature (nor has its run name)
    if settings["teacher_weighting"] == "ca-mkd" or len(settings["cache_keys"] or []) < 2 or settings["alpha"] == 1:
        settings["teacher_weighting"] = None  # weighs only several teachers; None also matches older checkpoints
    return json.loads(json.dumps(settings, default=str))


def differences(old: dict, new: dict) -> list[str]:
    return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in RUN_SETTINGS if old.get(key) != new.get(key)]


@dataclass
class Checkpoint:
    """The checkpoint file of one partial run folder; `epoch` is the last epoch it holds."""

    folder: Path
    settings: dict
    epoch: int = 0

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT

    def start(self, force: bool) -> dict | None:
        """The state to resume from, or None after clearing the folder for a fresh start.

        A folder without a checkpoint (stopped during its first epoch) holds nothing to keep.
        """
        if force or not self.path.is_file():
            clear(self.folder)
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors come in many types
            raise MedalError(f"{self.path} cannot be read ({type(exc).__name__}); pass --force to start over.") from None
        changed = differences(state["settings"], self.settings)
        if changed:
            raise MedalError(f"{self.folder} holds an interrupted run with other settings ({'; '.join(changed)}): "
                             f"run its command again to resume it, or pass --force to start over.")
        self.epoch = state["epoch"]
        return state

    def save(self, state: dict) -> None:
        write_torch(self.path, {"settings": self.settings, **state})
        self.epoch = state["epoch"]

    def resuming(self, out: Path, stopped: bool, epochs: int) -> str:
        """The line a resumed run starts with."""
        done = self.epoch
        if stopped or done == epochs:
            return f"resuming {out} after its last epoch ({done} of {epochs} done): evaluating"
        return f"resuming {out} from epoch {done + 1} of {epochs} ({done} epoch{'s' * (done != 1)} done)"

    def interrupted(self, trained: bool, epochs: int) -> str:
        """The line a run stopped by a signal ends with."""
        if trained:
            where = "interrupted while evaluating: run the same command again to finish"
        else:
            where = (f"interrupted at epoch {self.epoch + 1} of {epochs}: run the same command again to resume "
                     f"from epoch {self.epoch + 1}")
        return f"{where} (progress kept in {self.folder})"

    def remove(self) -> None:
        """A finished run keeps its outputs, not the state to continue it."""
        self.path.unlink(missing_ok=True)


def clear(folder: Path) -> None:
    """Empty a partial run folder, except the lock the running process holds in it."""
    for path in folder.iterdir():
        if path.name == LOCK:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
