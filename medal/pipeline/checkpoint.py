"""A distill run's resumable checkpoint, and the check that a rerun is the same run.

After every epoch rank 0 copies the run's state to CPU memory: the model, optimizer and scheduler,
the epoch, every random-number state, the best-so-far and patience counters, the history, and the
weights best.pt keeps (`kept`). The copy is the checkpoint file's bytes (`Checkpoint.prepare`, into a
medal.runtime.file_image), made on the training thread from the live state on the CPU, or on a GPU from
a copy in memory (`StateCopy`); a thread writes them (medal.runtime.background). `checkpoint.pt` goes
into the run's `.NAME.partial` folder, durably, the one before it kept as `checkpoint.previous.pt`
until then (each write goes over the file the write before it kept, `medal.runtime.io.atomic`). It is
the commit point of an epoch: history.csv is written after it,
from it, and best.pt from the last one written, when training ends or a signal stops it, and when
a run resumes. So whatever stops a run, the checkpoint never lags behind them, and a resume rewrites
both from it. best.pt is not rewritten after every better epoch: the checkpoint carries the same
weights, and that 94 MB write (ResNet-50) cost about 6% of an epoch on a 2-core CPU
(benchmarks/RESULTS.md, "Fixed costs"). After a kill -9 the partial folder's best.pt can lag
behind the checkpoint until the run is resumed. An epoch whose checkpoint comes while the
previous one is still being written gets none (the next one follows); the last epoch's is always
written. Running the same command again then continues after the last checkpoint written, or the
one before when that cannot be read, and on CPU ends bit-identical to a run never stopped.

A checkpoint only continues the run that wrote it: its settings (`RUN_SETTINGS`) must equal
the new command's, or the rerun stops and names what differs; `--force` starts over.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from medal.runtime.background import WriterStats
from medal.runtime.errors import MedalError
from medal.runtime.file_image import FileImage
from medal.runtime.io import atomic, is_temporary, read_torch, write_csv, write_torch
from medal.runtime.log import log

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.previous.pt"  # the checkpoint before, kept until the next one is on the disk
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
    epoch: int = 0  # the last epoch written to the disk
    kept: dict | None = None  # that checkpoint's kept weights: what best.pt is to hold
    kept_epoch: int | None = None  # the epoch whose weights best.pt holds, once this process wrote it
    image: FileImage = field(default_factory=FileImage, repr=False, compare=False)  # the next checkpoint file's bytes

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT

    def start(self, force: bool) -> dict | None:
        """The state to resume from, or None after clearing the folder for a fresh start.

        A folder without a checkpoint (stopped during its first epoch) holds nothing to keep. When the
        latest checkpoint cannot be read, the one before it is used, and the broken one removed.
        """
        found = [path for path in (self.path, self.folder / PREVIOUS) if path.is_file()]
        if force or not found:
            clear(self.folder)
            return None
        for path in self.folder.iterdir():
            if is_temporary(path):
                path.unlink()  # a write the killed process left unfinished
        state, unreadable = None, []
        for path in found:
            try:
                state = read_torch(path)
                break
            except MedalError as exc:
                unreadable.append(str(exc).rstrip("."))
        if state is None:
            raise MedalError(f"{unreadable[0]}; no earlier checkpoint can be read either: pass --force to start over."
                             if len(unreadable) > 1 else f"{unreadable[0]}; pass --force to start over.")
        if unreadable:
            log(f"warning: {unreadable[0]}; resuming from the checkpoint before it (epoch {state['epoch']})")
            self.path.unlink()  # the next checkpoint must not keep it as the previous one
        changed = differences(state["settings"], self.settings)
        if changed:
            raise MedalError(f"{self.folder} holds an interrupted run with other settings ({'; '.join(changed)}): "
                             f"run its command again to resume it, or pass --force to start over.")
        self.on_disk(state)
        self.write_best()  # the killed process may have missed it, or written a later epoch's
        return state

    def save(self, state: dict) -> None:
        """Copy an epoch's state and write it, then history.csv: all of it on the writer's thread (a GPU's)."""
        self.prepare(state)()

    def prepare(self, state: dict) -> Callable[[], None]:
        """Copy an epoch's state into the checkpoint file's bytes in memory now, on the calling thread, and return
        the write (the file, its fsync and renames, history.csv, best.pt when training ends) for the writer's
        thread. On the CPU the training thread calls it with the live model and optimizer: this is the copy to
        CPU memory that the checkpoint needs, and the write beside training takes little CPU (O_DIRECT, see
        medal.runtime.file_image). Nothing may call it again until the write has finished: it reuses the bytes."""
        self.image.save_torch({"settings": self.settings, **state}, crc=False)

        def write() -> None:
            atomic(self.path, self.image.write_to, keep=self.folder / PREVIOUS)
            self.on_disk(state)
            if state["stopped"] or state["epoch"] == self.settings["epochs"]:
                self.write_best()  # training ends: the last write, which the loop waits for

        return write

    def on_disk(self, state: dict) -> None:
        """The checkpoint on the disk holds `state` now: its epoch, its kept weights, history.csv from it."""
        self.epoch = state["epoch"]
        self.kept = state.get("kept")  # None before any epoch was kept; absent from an older medal's checkpoints
        write_csv(self.folder / "history.csv", state["history"])

    def write_best_after_signal(self) -> None:
        """best.pt when a signal stopped training: from the last checkpoint as read back from the disk, since
        its weights in memory may be a buffer (`StateCopy`) that the signal caught half-overwritten."""
        if self.kept is not None and self.kept["epoch"] != self.kept_epoch:
            self.kept = read_torch(self.path).get("kept")
            self.write_best()

    def write_best(self) -> None:
        """best.pt from the last checkpoint written, unless it already holds those weights: at the end of
        training, when a signal stops it, and when a run resumes; not after every better epoch (why: the
        module's docstring)."""
        if self.kept is not None and self.kept["epoch"] != self.kept_epoch:
            write_torch(self.folder / "best.pt", self.kept)
            self.kept_epoch = self.kept["epoch"]

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
        (self.folder / PREVIOUS).unlink(missing_ok=True)


def snapshot(obj: Any, into: Any = None) -> Any:
    """A copy of a state (dicts, lists and tuples of tensors and plain values) with every tensor copied to CPU
    memory: what a background write may read while training goes on. Tensors shared within `obj` stay shared.

    `into`: an earlier copy of the same state, that nothing reads any more; its CPU tensors of the same shape
    and dtype are overwritten rather than allocated anew (see `StateCopy`)."""
    copies: dict[int, torch.Tensor] = {}

    def copy_of(value: Any, old: Any) -> Any:
        if isinstance(value, (int, float, str, type(None))):  # immutable: nothing to copy
            return value
        if isinstance(value, torch.Tensor):
            if id(value) not in copies:
                copies[id(value)] = (old.copy_(value.detach()) if reusable(old, value)
                                     else value.detach().to("cpu", copy=True))
            return copies[id(value)]
        if isinstance(value, dict):  # OrderedDict (its _metadata too), a scheduler's Counter: copy.copy keeps them
            out = copy.copy(value)
            for key, item in value.items():
                out[key] = copy_of(item, old.get(key) if isinstance(old, dict) else None)
            return out
        if isinstance(value, (list, tuple)):
            olds = old if isinstance(old, type(value)) and len(old) == len(value) else [None] * len(value)
            return type(value)(copy_of(item, o) for item, o in zip(value, olds))
        return copy.deepcopy(value)

    return copy_of(obj, into)


def reusable(old: Any, value: torch.Tensor) -> bool:
    return (isinstance(old, torch.Tensor) and old.device.type == "cpu" and old.shape == value.shape
            and old.dtype == value.dtype and old.layout == value.layout == torch.strided and old.is_contiguous()
            and value.is_contiguous())


class StateCopy:
    """Snapshots of the parts of a state (the model, the optimizer) that reuse the memory of the previous ones.

    Why: a ResNet-50 with Adam is 270 MB; allocating that anew every epoch (page faults, memory handed back to the
    OS) doubles the copy's time on the training thread (0.077 s against 0.038 s, benchmarks/RESULTS.md), which on
    a GPU is paid every epoch of a fraction of a second. The caller must know that nothing reads the previous
    copy of a part any more: in distill, a checkpoint is only prepared once the previous write has finished,
    and these tensors go nowhere that outlives a write (the weights best.pt keeps between epochs are a
    `snapshot` of their own).
    """

    def __init__(self) -> None:
        self._last: dict[str, Any] = {}

    def __call__(self, part: str, obj: Any) -> Any:
        self._last[part] = snapshot(obj, into=self._last.get(part))
        return self._last[part]


_last_run = WriterStats()


def record_stats(stats: WriterStats) -> None:
    global _last_run
    _last_run = stats


def checkpoint_stats() -> WriterStats:
    """The checkpoints of the last run this process trained: how many were written and skipped, and the
    seconds its training thread spent on them (benchmarks/run_overhead.py reports it)."""
    return _last_run


def clear(folder: Path) -> None:
    """Empty a partial run folder, except the lock the running process holds in it."""
    for path in folder.iterdir():
        if path.name == LOCK:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
