"""Reading MedMNIST's .npz layout: one split's images and labels, checked before anything uses them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from medal.data.base import Split
from medal.data.checks import check_images, check_labels
from medal.runtime.errors import MedalError


def read_splits(path: Path, flag: str, splits: Iterable[str]) -> dict[str, Split]:
    """These splits loaded whole (np.load reads only the members asked for)."""
    try:
        with np.load(path) as npz:
            return {s: read_split(npz, s, flag, path) for s in splits}
    except (OSError, ValueError, KeyError) as exc:
        raise MedalError(f"{path} is not a MedMNIST .npz file ({exc}).") from None


def read_split(npz: np.lib.npyio.NpzFile, split: str, flag: str, path: Path) -> Split:
    """One split, checked against the task before anything uses it (see medal.data.checks)."""
    images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    if labels.ndim == 1:  # some re-saved files drop the label axis
        labels = labels[:, None]
    check_images(path, split, images, labels)
    check_labels(path, flag, split, labels)
    if images.ndim == 3:  # grayscale files store (N, H, W)
        images = images[..., None]
    return Split(images=np.ascontiguousarray(images), labels=labels.astype(np.int64))
