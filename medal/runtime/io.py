"""File helpers: writes that never leave half a file (temporary name, then rename), and file hashes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def file_hash(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks (datasets and checkpoints are large)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) and rename tmp to path once it returned. The temporary name is unique even among
    processes on several machines writing the same file (a shared sweep's sweep.json)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: Path, obj: Any) -> Path:
    return atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_npy(path: Path, array: np.ndarray) -> Path:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return atomic(path, save)


def write_torch(path: Path, obj: Any) -> Path:
    return atomic(path, lambda tmp: torch.save(obj, tmp))


def write_csv(path: Path, rows: list[dict]) -> Path:
    def save(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    return atomic(path, save)
