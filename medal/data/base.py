"""What every command needs of a dataset, whether a MedMNIST file or one imported with `medal import-dataset`.

The splits, the task string for multi-label data, a split's arrays and the data fingerprint
live here, below both kinds of dataset and the stores that stream them.

`medal.data.medmnist.MedMNISTData` and `medal.data.imported.store.ImportedData` both have this shape, so the
pipeline (cache-teacher, distill, evaluate, the figures) never asks which kind it was given.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

SPLITS = ("train", "val", "test")
MULTI_LABEL = "multi-label, binary-class"


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, C) uint8; a medal.data.stream.store.StoredImages when streamed
    labels: np.ndarray  # (N, L) int64; L == 1 except for multi-label data


class Dataset(Protocol):
    flag: str  # the name caches and runs are keyed by: a MedMNIST flag, or an imported dataset's name
    size: int  # images are size x size pixels
    path: Path  # the .npz file or the .zarr folder
    md5: str  # the file's MD5 for MedMNIST; an imported dataset's fingerprint
    official: bool  # the official MedMNIST file (never for an imported dataset)
    splits: dict[str, Split]

    @property
    def task(self) -> str: ...  # a medmnist task string: what getAUC/getACC are told

    @property
    def multi_label(self) -> bool: ...

    @property
    def num_outputs(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def label_names(self) -> list[str]: ...  # class names in logit order, or the multi-label names

    def targets(self, split: str) -> np.ndarray: ...


def fingerprint(splits: dict[str, Split]) -> str:
    """SHA-256 of every split's images and labels: what a teacher cache was computed from.

    A streamed split is hashed block by block: the same bytes in the same order, the same digest.
    """
    digest = hashlib.sha256()
    for name in SPLITS:
        split = splits[name]
        for array in (split.images, split.labels.astype(np.int64)):
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            for block in array.blocks() if hasattr(array, "blocks") else (np.ascontiguousarray(array),):
                digest.update(block.tobytes())
    return digest.hexdigest()
