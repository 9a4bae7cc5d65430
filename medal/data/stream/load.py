"""`load_dataset` under a memory budget: each split resident if it fits, else streamed from a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from medal.data.base import SPLITS, Split
from medal.data.checks import check_labels
from medal.data.npz import read_splits
from medal.data.stream.budget import MemoryBudget, human
from medal.data.stream.store import StoredImages, convert_npz, npz_image_bytes, store_name
from medal.runtime.errors import MedalError
from medal.runtime.log import log


def load_within_budget(path: Path, flag: str, size: int, md5: str, budget: MemoryBudget
                       ) -> tuple[dict[str, Split], str | None]:
    """(splits, the data fingerprint when the store already knows it) for one MedMNIST .npz.

    Logs one line per split saying which path it takes and why. The store is converted once
    per file (its name carries the file's MD5), and reused by every later run.
    """
    try:
        sizes = npz_image_bytes(path)
    except (OSError, ValueError, KeyError) as exc:
        raise MedalError(f"{path} is not a MedMNIST .npz file ({exc}).") from None
    store = budget.stores / store_name(flag, size, md5)
    resident = plan_splits(budget, sizes, store)
    if all(resident.values()):
        return read_splits(path, flag, SPLITS), None
    if not (store / "zarr.json").is_file():
        convert_npz(path, store, flag, size, md5)
    group = zarr.open_group(store, mode="r")
    splits = read_splits(path, flag, [s for s in SPLITS if resident[s]])
    stream_bytes = streaming_bytes(budget, sizes, resident)
    for split in SPLITS:
        if not resident[split]:
            labels = np.asarray(group[f"{split}/labels"][...], dtype=np.int64)
            check_labels(path, flag, split, labels)
            splits[split] = Split(images=StoredImages(store / split / "images", stream_bytes), labels=labels)
    return {s: splits[s] for s in SPLITS}, str(group.attrs["fingerprint"])


def plan_splits(budget: MemoryBudget, sizes: dict[str, int], store: Path) -> dict[str, bool]:
    """split -> resident?; when any split streams, one line per split says which path it takes and why."""
    resident = budget.plan(sizes)
    if all(resident.values()):
        return resident  # the usual case: nothing to say
    left = budget.bytes
    for split in SPLITS:
        cost = budget.resident_cost(sizes[split])
        if resident[split]:
            log(f"{split}: {human(sizes[split])} of images, resident (takes {human(cost)} of the {human(left)} left"
                f" of {human(budget.bytes)}, {budget.why})")
            left -= cost
        else:
            log(f"{split}: {human(sizes[split])} of images, streamed from {store} (resident it would take"
                f" {human(cost)}, more than the {human(left)} left of {human(budget.bytes)}, {budget.why})")
    return resident


def streaming_bytes(budget: MemoryBudget, sizes: dict[str, int], resident: dict[str, bool]) -> int:
    """What the streamed splits' readers may hold at once: the budget less the resident splits."""
    return budget.bytes - sum(budget.resident_cost(sizes[s]) for s in SPLITS if resident[s])
