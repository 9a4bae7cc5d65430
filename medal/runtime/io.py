"""File helpers: writes that never leave half a file, and file hashes.

Every file medal finishes goes through `atomic`: written under a temporary name, fsync'd, renamed,
and its folder fsync'd after, so that a crash (or a power cut) leaves the old file or the new one,
never an empty one. A folder built under a temporary name (a run, a cache, a dataset store) is
renamed into place by `publish_dir`, its files fsync'd first. Reading a torch checkpoint goes
through `read_torch`, which unpickles tensors and plain values only, never code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medal.runtime.errors import MedalError


def file_hash(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks (datasets and checkpoints are large)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to the disk (a folder's fsync is a no-op where the OS has none)."""
    flags = os.O_RDONLY
    if Path(path).is_dir():
        if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a folder to flush it
            return
        flags |= os.O_DIRECTORY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temporary(path: Path) -> bool:
    """A name `atomic` writes under: what a killed writer leaves behind."""
    return path.name.startswith(".") and ".tmp-" in path.name


def atomic(path: Path, write: Callable[[Path], None], keep: Path | None = None) -> Path:
    """Call write(tmp), make tmp durable and rename it to path. The temporary name is unique even among
    processes on several machines writing the same file (a shared sweep's sweep.json).

    `keep`: where the file being replaced goes first, so that it stays until the new one is on the disk.
    The file `keep` held until now, which this write discards, becomes the temporary file, and `write` goes
    over it (write_torch, medal.runtime.file_image) rather than into a new file. Why: on this project's CI
    machine a 283 MB checkpoint into a new file cost the writer's thread 0.09-0.80 s of CPU during training,
    taken from training on two cores; over the discarded file, 0.06-0.28 s (benchmarks/RESULTS.md, "Fixed
    costs"). Meanwhile only `path` is left of the two; a killed write leaves the temporary file, which
    `is_temporary` names.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        if keep is not None and keep.exists() and path.exists():
            os.replace(keep, tmp)  # its pages and disk blocks reused: none allocated
        write(tmp)
        fsync_path(tmp)
        if keep is not None and path.exists():
            os.replace(path, keep)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def publish_dir(tmp: Path, final: Path) -> Path:
    """Rename a folder built under a temporary name into place, durably: every file and folder in it
    fsync'd first, the parent after. Raises what the rename raises (e.g. `final` exists)."""
    for folder, _, files in os.walk(tmp):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))
    Path(tmp).rename(final)
    fsync_path(Path(final).parent)
    return Path(final)


def write_json(path: Path, obj: Any) -> Path:
    return atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_npy(path: Path, array: np.ndarray) -> Path:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return atomic(path, save)


def write_torch(path: Path, obj: Any, keep: Path | None = None, crc: bool = True) -> Path:
    """`crc=False` leaves out the zip's CRC-32 of each record, which torch.load never checks (a flipped byte in a
    tensor loads silently either way): a fsync'd 270 MB checkpoint takes 0.295 s instead of 0.357 s
    (benchmarks/RESULTS.md). `unzip -t` then reports the file as damaged, so only checkpoint.pt, which nothing
    but medal reads, is written so (best.pt is a deliverable). With `keep`, the file written over may be the
    discarded one (`atomic`): written from its start, and cut where the new zip ends."""
    def save(tmp: Path) -> None:
        with zip_crc(crc), open(tmp, "r+b" if tmp.exists() else "wb") as f:
            torch.save(obj, f)
            f.truncate()

    return atomic(path, save, keep=keep)


_crc_option = threading.Lock()  # torch keeps the option process-wide: one medal write sets it at a time


@contextmanager
def zip_crc(on: bool) -> Iterator[None]:
    """torch.save without the zip's CRC-32s inside the block unless `on` (where torch has the option: an older one
    writes them). The option is process-wide: another thread's torch.save meanwhile leaves them out too."""
    try:
        from torch.utils.serialization import config
    except ImportError:
        config = None
    if on or config is None:
        yield
        return
    with _crc_option:
        before = config.save.compute_crc32
        config.save.compute_crc32 = False
        try:
            yield
        finally:
            config.save.compute_crc32 = before


def read_torch(path: Path) -> Any:
    """A torch checkpoint on the CPU, unpickled as tensors and plain values only (`weights_only`, which torch 2.4
    does not default to): a crafted file raises MedalError, and none of its code runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; refused globals are pickle.UnpicklingError
        raise MedalError(f"{path} could not be read as a checkpoint of tensors ({type(exc).__name__}).") from None


def write_csv(path: Path, rows: list[dict]) -> Path:
    def save(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    return atomic(path, save)
