"""A dataset imported with `medal import-dataset`: one Zarr v3 group per dataset.

Layout of `<data dir>/<name>.zarr`:

    attrs               medal_dataset_format (1), name, task (a medmnist task string),
                        label_names, size, channels, n_samples {split: n}, fingerprint,
                        interpolation, source, created, medal_version,
                        duplicates {within_splits, across_splits}, duplicates_dropped
                        (medal.data.imported.duplicates defines them)
    {split}/images      (N, S, S, C) uint8   one image per chunk, 256 images per shard, Blosc/zstd
    {split}/labels      (N, L) int64         class index (L = 1), or 0/1 per label (multi-label)

One image per chunk makes reading any row cheap (a later bounded-memory reader samples batches
from it); shards keep the file count low. The fingerprint is `medal.data.base.fingerprint` of the
arrays, so a teacher cache records and checks it exactly as for a MedMNIST file. A dataset is
written under a hidden temporary name and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from medal.data.base import MULTI_LABEL, SPLITS, Split, fingerprint
from medal.data.stream.budget import MemoryBudget
from medal.data.stream.load import plan_splits, streaming_bytes
from medal.data.stream.store import StoredImages
from medal.runtime.errors import MedalError
from medal.runtime.io import publish_dir
from medal.runtime.zarr_codecs import COMPRESSORS

FORMAT = 1  # bump when the layout changes; older datasets are then refused with a re-import hint
SHARD_ROWS = 256
LABEL_CHUNK_ROWS = 65536
COMPRESSOR = COMPRESSORS[0]  # Blosc/zstd alone: the layout medal.data.stream.store's fast row reader reads


def data_dir(path: Path | str | None = None) -> Path:
    """--data-dir, else $MEDAL_DATA_DIR, else ~/.cache/medal/datasets."""
    chosen = path or os.environ.get("MEDAL_DATA_DIR") or Path.home() / ".cache" / "medal" / "datasets"
    return Path(chosen).expanduser()


@dataclass
class ImportedData:
    """An imported dataset, all splits resident in memory; the same interface as `MedMNISTData`."""

    flag: str  # the dataset's name: what caches and runs are keyed by
    size: int
    path: Path
    md5: str  # no single file to hash: the fingerprint stands in for it
    official: bool
    splits: dict[str, Split] = field(repr=False)
    attrs: dict = field(repr=False)

    @property
    def task(self) -> str:
        return self.attrs["task"]

    @property
    def multi_label(self) -> bool:
        return self.task == MULTI_LABEL

    @property
    def label_names(self) -> list[str]:
        return list(self.attrs["label_names"])

    @property
    def num_outputs(self) -> int:
        return len(self.label_names)

    @property
    def channels(self) -> int:
        return int(self.attrs["channels"])

    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]  # checked against the arrays when they were loaded

    def targets(self, split: str) -> np.ndarray:
        """Loss targets: class indices (N,), or the 0/1 label matrix (N, L) when multi-label."""
        labels = self.splits[split].labels
        return labels.astype(np.float32) if self.multi_label else labels[:, 0]


def read_attrs(path: Path) -> dict:
    """A dataset's attrs, or a MedalError saying why `path` is not a medal dataset."""
    path = Path(path)
    if not path.is_dir():
        raise MedalError(f"no dataset at {path}; import one with `medal import-dataset SOURCE --name NAME --size S`.")
    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:  # zarr raises several types for a folder that is not a group
        attrs = {}
    if "medal_dataset_format" not in attrs:
        raise MedalError(f"{path} is not a medal dataset; import one with `medal import-dataset`.")
    if attrs["medal_dataset_format"] != FORMAT:
        raise MedalError(f"{path} was written by another medal dataset format; import it again with `medal import-dataset --force`.")
    return attrs


def open_dataset(path: Path, budget: MemoryBudget | None = None) -> ImportedData:
    """Load the splits (with a `budget`, those that fit it; the others are read batch by batch from
    the store) and check the arrays still match the fingerprint written at import."""
    path = Path(path)
    attrs = read_attrs(path)
    group = zarr.open_group(path, mode="r")
    resident = {s: True for s in SPLITS}
    if budget is not None:
        side = int(attrs["size"]) ** 2 * int(attrs["channels"])
        sizes = {s: int(attrs["n_samples"][s]) * side for s in SPLITS}
        resident = plan_splits(budget, sizes, path)
        stream_bytes = streaming_bytes(budget, sizes, resident)
    splits = {s: Split(images=group[f"{s}/images"][...] if resident[s] else StoredImages(path / s / "images", stream_bytes),
                       labels=group[f"{s}/labels"][...]) for s in SPLITS}
    current = fingerprint(splits) if all(resident.values()) else stored_fingerprint(group)
    if current != attrs["fingerprint"]:
        raise MedalError(f"the arrays in {path} changed since they were imported (fingerprint differs); "
                         f"import the dataset again with `medal import-dataset --force`.")
    name = path.name.removesuffix(".zarr")
    return ImportedData(flag=name, size=int(attrs["size"]), path=path, md5=attrs["fingerprint"], official=False,
                        splits=splits, attrs=attrs)


def stored_fingerprint(group: zarr.Group) -> str:
    """`medal.data.base.fingerprint` of a written group, read a shard at a time (a dataset may not fit in memory)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for key in ("images", "labels"):
            array = group[f"{split}/{key}"]
            dtype = array[0:0].dtype
            digest.update(f"{split}:{dtype}:{tuple(array.shape)}".encode())
            for start in range(0, array.shape[0], SHARD_ROWS):
                digest.update(np.ascontiguousarray(array[start : start + SHARD_ROWS]).tobytes())
    return digest.hexdigest()


class DatasetWriter:
    """Writes one dataset under a hidden temporary name; `commit()` renames it into place.

    Used as a context manager: leaving the block without commit (an error, Ctrl-C) deletes the
    temporary folder, so nothing half-written survives.
    """

    def __init__(self, final: Path, size: int, channels: int, label_width: int):
        self.final = Path(final)
        self.tmp = self.final.with_name(f".{self.final.name}.partial-{os.getpid()}")
        self.size, self.channels, self.label_width = size, channels, label_width

    def __enter__(self) -> "DatasetWriter":
        self.final.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.final.parent.glob(f".{self.final.name}.partial-*"):  # left by an interrupted import
            shutil.rmtree(stale, ignore_errors=True)
        self.group = zarr.open_group(self.tmp, mode="w", zarr_format=3)
        return self

    def create_split(self, split: str, n: int) -> None:
        """Room for n images and labels (fewer may be kept: see `truncate`)."""
        s, c = self.size, self.channels
        self.group.create_array(f"{split}/images", shape=(n, s, s, c), dtype="uint8", chunks=(1, s, s, c),
                                shards=(SHARD_ROWS, s, s, c), compressors=COMPRESSOR)
        self.group.create_array(f"{split}/labels", shape=(n, self.label_width), dtype="int64",
                                chunks=(min(LABEL_CHUNK_ROWS, max(n, 1)), self.label_width), compressors=COMPRESSOR)

    def write(self, split: str, start: int, images: np.ndarray, labels: np.ndarray) -> None:
        rows = slice(start, start + len(images))
        self.group[f"{split}/images"][rows] = images
        self.group[f"{split}/labels"][rows] = labels

    def labels(self, split: str) -> np.ndarray:
        return self.group[f"{split}/labels"][...]

    def truncate(self, split: str, n: int) -> None:
        """Keep the first n rows (images that could not be read were skipped)."""
        for key, width in (("images", (self.size, self.size, self.channels)), ("labels", (self.label_width,))):
            self.group[f"{split}/{key}"].resize((n, *width))

    def commit(self, attrs: dict) -> Path:
        """Fingerprint what was written, record the attrs, rename into place (replacing an older import)."""
        n_samples = {s: int(self.group[f"{s}/labels"].shape[0]) for s in SPLITS}
        self.group.attrs.update({"medal_dataset_format": FORMAT, **attrs, "size": self.size, "channels": self.channels,
                                 "n_samples": n_samples, "fingerprint": stored_fingerprint(self.group)})
        if self.final.exists():  # --force
            shutil.rmtree(self.final)
        return publish_dir(self.tmp, self.final)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
