"""Checks on a MedMNIST-format file, run when it is loaded and so before any work.

A label outside the task's classes would otherwise surface deep inside training as
`IndexError: Target 7 is out of bounds`, or, for multi-label data, train silently on a
wrong target. Each check ends in one sentence naming the file, the split and what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from medmnist.info import INFO

from medal.runtime.errors import MedalError


def check_images(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """uint8 pixels, (N, H, W) or (N, H, W, C) with 1 or 3 channels, one image per label, at least one."""
    name = f"{path}: {split}_images"
    if images.dtype != np.uint8:
        raise MedalError(f"{name} are {images.dtype}, not uint8 (MedMNIST stores pixels as 0..255).")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise MedalError(f"{name} have shape {images.shape}; expected (N, H, W) or (N, H, W, C) with 1 or 3 channels.")
    if len(images) != len(labels):
        raise MedalError(f"{path}: {split} holds {len(images)} images but {len(labels)} labels.")
    if len(images) == 0:
        raise MedalError(f"{path}: {split} holds no samples.")


def check_labels(path: Path, flag: str, split: str, labels: np.ndarray) -> None:
    """Whole numbers inside the task: class indices 0..C-1, or a 0/1 column per label when multi-label."""
    name = f"{path}: {split}_labels"
    classes, multi_label = len(INFO[flag]["label"]), INFO[flag]["task"].startswith("multi-label")
    if labels.ndim != 2:
        raise MedalError(f"{name} have shape {labels.shape}; expected (N,) or (N, L).")
    if labels.dtype.kind not in "biuf" or (labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0)):
        raise MedalError(f"{name} are {labels.dtype} and hold values that are not whole numbers; labels must be class indices.")
    width = classes if multi_label else 1
    if labels.shape[1] != width:
        expected = f"{flag} has {classes} labels" if multi_label else "expected 1 (one class index per sample)"
        raise MedalError(f"{name} have {labels.shape[1]} columns, but {expected}.")
    bad = (labels != 0) & (labels != 1) if multi_label else (labels < 0) | (labels >= classes)
    if bad.any():
        values = np.unique(labels[bad])
        shown = ", ".join(str(int(v)) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        where = f"{shown} (in {int(bad.any(axis=1).sum())} samples)"
        if multi_label:
            raise MedalError(f"{name} hold {where}; {flag}'s labels are 0 or 1.")
        raise MedalError(f"{name} hold {where}, outside {flag}'s classes 0..{classes - 1}.")


def check_val_classes(name: str, labels: np.ndarray, outputs: int, multi_label: bool) -> None:
    """Every class (every label's 0 and 1) in the val split: without one, validation AUC, which picks
    the kept epoch, is undefined, and a run would train to the end and keep nothing."""
    if multi_label:
        missing = [c for c in range(outputs) if len(np.unique(labels[:, c])) < 2]
    else:
        missing = sorted(set(range(outputs)) - set(np.unique(labels).tolist()))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        kind = "labels that are never both 0 and 1" if multi_label else "no images of class"
        raise MedalError(f"{name}'s val split has {kind} {shown}: validation AUC, which selects the kept epoch, "
                         f"is undefined; give val every class.")


def check_same_image_size(path: Path, images: dict[str, np.ndarray]) -> None:
    """Every split at one height, width and channel count (the student and teacher see one shape)."""
    shapes = {split: array.shape[1:] for split, array in images.items()}
    first, reference = next(iter(shapes.items()))
    for split, shape in shapes.items():
        if shape != reference:
            raise MedalError(f"{path}: {split}_images are {'x'.join(map(str, shape))} but {first}_images are "
                             f"{'x'.join(map(str, reference))}; every split must have one image size.")
