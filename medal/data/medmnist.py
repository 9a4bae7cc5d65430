"""MedMNIST 2D data: find or download the official .npz, load it whole, fingerprint it.

A whole split of MedMNIST is small (at most a few hundred MB at 28 px), so medal keeps it in
memory as uint8 at native size and resizes per batch on the device (see `medal.data.preprocess`),
instead of going through a DataLoader. Given a memory budget, a split that does not fit it is
streamed from a converted store instead (see `medal.data.stream`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from medmnist.info import DEFAULT_ROOT, INFO

from medal.data.base import MULTI_LABEL, SPLITS, Split, fingerprint
from medal.data.checks import check_same_image_size
from medal.data.npz import read_splits
from medal.runtime.errors import MedalError
from medal.runtime.io import file_hash
from medal.runtime.log import warn
from medal.runtime.progress import foreign_bar

if TYPE_CHECKING:
    from medal.data.stream.budget import MemoryBudget

SIZES = (28, 64, 128, 224)
DATASETS = tuple(flag for flag in INFO if not flag.endswith("3d"))
BUNDLED_ROOT = Path(__file__).parents[1] / "assets" / "demo"
DEMO_DATASET = "bloodmnist"


@dataclass
class MedMNISTData:
    """One MedMNIST file, all three splits, plus what the metrics need to know of it."""

    flag: str
    size: int
    path: Path
    md5: str
    official: bool
    splits: dict[str, Split] = field(repr=False)
    known_fingerprint: str | None = field(default=None, repr=False)  # a converted store's, hashed as it was written

    @property
    def info(self) -> dict:
        return INFO[self.flag]

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def multi_label(self) -> bool:
        return self.task == MULTI_LABEL

    @property
    def num_outputs(self) -> int:
        """Logits per sample: one per class, or one per label for multi-label data."""
        return len(self.info["label"])

    @property
    def label_names(self) -> list[str]:
        """Class names in logit order (for multi-label data, one name per label)."""
        return [self.info["label"][str(i)] for i in range(self.num_outputs)]

    @property
    def channels(self) -> int:
        """Native channels of the images: 1 for grayscale sets, 3 for colour ones."""
        return int(self.splits["train"].images.shape[-1])

    def targets(self, split: str) -> np.ndarray:
        """Loss targets: class indices (N,), or the 0/1 label matrix (N, L) when multi-label."""
        labels = self.splits[split].labels
        return labels.astype(np.float32) if self.multi_label else labels[:, 0]

    @cached_property
    def fingerprint(self) -> str:
        """Computed once: hashing a 224 px file takes a while, and several checks need it."""
        return self.known_fingerprint or fingerprint(self.splits)


def check_dataset(flag: str) -> str:
    flag = flag.lower()
    if flag not in DATASETS:
        raise MedalError(f"unknown dataset {flag!r}: choose one of {', '.join(DATASETS)}.")
    return flag


def default_root() -> Path:
    return Path(os.environ.get("MEDMNIST_ROOT", DEFAULT_ROOT)).expanduser()


def npz_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def download(flag: str, size: int, root: Path) -> None:
    """Fetch the official file as medmnist does; offline, explain where to put it instead."""
    from torchvision.datasets.utils import download_url

    suffix = "" if size == 28 else f"_{size}"
    url, md5 = INFO[flag][f"url{suffix}"], INFO[flag][f"MD5{suffix}"]
    root.mkdir(parents=True, exist_ok=True)
    try:
        with foreign_bar(f"downloading {url} into {root}"):
            download_url(url, str(root), filename=npz_name(flag, size), md5=md5)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        partial = root / npz_name(flag, size)
        partial.unlink(missing_ok=True)
        raise MedalError(
            f"{npz_name(flag, size)} is not in {root} and could not be downloaded ({type(exc).__name__}); "
            f"fetch it from {url} (MD5 {md5}) into that directory, or pass --root DIR where it lies."
        ) from None


def load_dataset(flag: str, root: Path | None = None, size: int = 28, allow_download: bool = True,
                 budget: "MemoryBudget | None" = None) -> MedMNISTData:
    """Load all splits of one MedMNIST 2D file, downloading it only when it is absent.

    With a `budget` (medal.data.stream.budget), splits that do not fit it are streamed from a store.
    """
    flag = check_dataset(flag)
    if size not in SIZES:
        raise MedalError(f"--size must be one of {', '.join(map(str, SIZES))}, got {size}.")
    root = Path(root).expanduser() if root is not None else default_root()
    path = root / npz_name(flag, size)
    if not path.is_file():
        if not allow_download:
            raise MedalError(f"{path.name} is not in {root}; pass --root DIR where it lies.")
        download(flag, size, root)
    suffix = "" if size == 28 else f"_{size}"
    md5 = file_hash(path, "md5")
    official = md5 == INFO[flag][f"MD5{suffix}"]
    known = None
    if budget is not None:
        from medal.data.stream.load import load_within_budget

        splits, known = load_within_budget(path, flag, size, md5, budget)
    else:
        splits = read_splits(path, flag, SPLITS)
    check_same_image_size(path, {s: splits[s].images for s in SPLITS})
    if not official and root.resolve() != BUNDLED_ROOT.resolve():
        counts = ", ".join(f"{s} {len(splits[s].labels)}" for s in SPLITS)
        warn(f"{path} is not the official {flag} file (MD5 {md5} differs); using it as is ({counts}).")
    return MedMNISTData(flag=flag, size=size, path=path, md5=md5, official=official, splits=splits,
                        known_fingerprint=known)
