"""`--dataset` for every command: a MedMNIST flag, the name of an imported dataset, or its path."""

from __future__ import annotations

from pathlib import Path

from medal.data.base import Dataset
from medal.data.imported import store
from medal.data.medmnist import DATASETS, load_dataset
from medal.data.stream.budget import MemoryBudget
from medal.runtime.errors import MedalError


def is_path(dataset: str) -> bool:
    return "/" in dataset or dataset.endswith(".zarr")


def dataset_name(dataset: str) -> str:
    """The name caches and runs are keyed by: a flag in lower case, a name as given, a path's folder name."""
    if dataset.lower() in DATASETS:
        return dataset.lower()
    return Path(dataset).name.removesuffix(".zarr") if is_path(dataset) else dataset


def resolve_dataset(dataset: str, root: Path | None = None, size: int | None = None,
                    data_dir: Path | None = None, budget: MemoryBudget | None = None) -> Dataset:
    """Load a dataset: all splits in memory, or with a `budget` those that fit it (the rest streamed).

    A MedMNIST flag reads the .npz of that `size` (default 28) under `root`; anything else is an
    imported dataset: a path to its .zarr folder, or a name looked up in the data directory
    (`data_dir`, else $MEDAL_DATA_DIR, else ~/.cache/medal/datasets). An imported dataset has
    one size; asking for another is an error.
    """
    if dataset.lower() in DATASETS:
        return load_dataset(dataset, root, size or 28, budget=budget)
    if is_path(dataset):
        path = Path(dataset).expanduser()
    else:
        path = store.data_dir(data_dir) / f"{dataset}.zarr"
        if not path.is_dir():
            raise MedalError(f"unknown dataset {dataset!r}: not a MedMNIST 2D flag ({', '.join(DATASETS)}) nor a dataset "
                             f"in {path.parent}; import it with `medal import-dataset SOURCE --name {dataset} --size S` "
                             f"or pass --data-dir DIR where it lies.")
    data = store.open_dataset(path, budget)
    if data.flag.lower() in DATASETS:
        raise MedalError(f"{path} is named like the MedMNIST flag {data.flag}; rename the folder.")
    if size is not None and size != data.size:
        raise MedalError(f"dataset {data.flag} was imported at {data.size} px, not {size}; drop --size, or import it "
                         f"again at that size under another name.")
    return data
