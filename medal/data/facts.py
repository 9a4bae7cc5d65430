"""What a deployed student needs to know of the data it was trained on, read in one place.

A MedMNIST flag is described by medmnist's INFO; a dataset imported with `medal import-dataset`
by the attrs of its store (config.json's `data_path`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medmnist import INFO

from medal.runtime.errors import MedalError


@dataclass(frozen=True)
class DatasetFacts:
    name: str
    task: str
    label_names: list[str]  # in output (logit) order
    channels: int  # native channels of the images: 1 grayscale, 3 colour
    license: str  # as the dataset states it, e.g. "CC BY 4.0"
    description: str
    imported: bool = False  # by `medal import-dataset`, not a MedMNIST file
    duplicates: dict | None = None  # an import's {within_splits, across_splits} (medal.data.imported.duplicates)
    duplicates_dropped: int = 0  # val/test copies of training images left out by --drop-duplicates


def dataset_facts(config: dict) -> DatasetFacts:
    """The facts for a run's config.json (its `dataset` flag)."""
    flag = config["dataset"]
    if flag not in INFO:
        return imported_facts(config)
    info = INFO[flag]
    labels = [info["label"][str(i)] for i in range(len(info["label"]))]
    return DatasetFacts(name=flag, task=info["task"], label_names=labels, channels=int(info["n_channels"]),
                        license=info.get("license", "see the dataset's own terms"), description=info["description"])


def imported_facts(config: dict) -> DatasetFacts:
    """An imported dataset describes itself in its store's attrs."""
    from medal.data.imported.store import read_attrs

    path = config.get("data_path")
    if not path:
        raise MedalError(f"the run's dataset {config['dataset']!r} is not a MedMNIST flag and its config.json "
                         f"names no data_path; label names cannot be read.")
    attrs = read_attrs(Path(path))
    return DatasetFacts(name=config["dataset"], task=attrs["task"], label_names=list(attrs["label_names"]),
                        channels=int(attrs["channels"]), license="see the dataset's own terms",
                        description=f"imported with medal import-dataset from {attrs.get('source', 'a local image set')}",
                        imported=True, duplicates=attrs.get("duplicates"),
                        duplicates_dropped=int(attrs.get("duplicates_dropped", 0)))


def label_names(config: dict) -> list[str]:
    """Class (or, for multi-label data, label) names in the order of the student's outputs."""
    return dataset_facts(config).label_names
